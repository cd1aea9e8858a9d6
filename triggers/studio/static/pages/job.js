// One job: its manifest over SSE; stage timeline, error, outputs, live loss chart, webhook attempts.
import { api } from "../api.js";
import { lossChart, lossSeries } from "../chart.js";
import { fail, fmtAge, h, markNav, progressBar, show, statusBadge, stream } from "../dom.js";

// `play`: the page was opened by submitting a brief, so the video starts once the job is done.
export function jobPage(jobId, { play = false } = {}) {
  markNav("jobs");
  const box = h("div", { id: "job" }, h("p", { class: "muted" }, "Loading…"));
  show(jobId, h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")), box);
  let lastOutputs = "";
  const media = h("div", { id: "outputs" });
  const avatarBox = h("section", { id: "job-avatar", hidden: true });
  const hiddenSeries = new Set();
  let avatarShownFor = null;
  const draw = (m) => {
    const outputs = JSON.stringify(m.outputs);
    const shown = outputs + JSON.stringify(m.stages.align?.metrics?.splits ?? null);
    if (shown !== lastOutputs) { lastOutputs = shown; drawOutputs(m, media, play); }
    const trained = m.kind === "train" && m.stages.train?.status === "succeeded" ? m.stages.train.handoff : null;
    if (trained && avatarShownFor !== m.job_id) { avatarShownFor = m.job_id;
      drawAvatar(m, trained, avatarBox).catch((err) => { avatarBox.replaceChildren(fail(err)); avatarBox.hidden = false; });
    }
    const open = new Set([...box.querySelectorAll("#stages > li > details[open]")].map((d) => d.parentElement.dataset.stage));
    const focused = focusKey(box);
    box.replaceChildren(...[
      h("p", {}, statusBadge(m.status), ` ${m.kind} · created ${fmtAge(m.created_at)} ago`),
      m.error ? h("div", { class: "error", role: "alert", id: "job-error" },
        h("strong", {}, m.error.code), `: ${m.error.message}`) : null,
      trainChart(m, hiddenSeries),
      h("section", {}, h("h2", {}, "Outputs"), media),
      avatarBox,
      h("section", {}, h("h2", {}, "Stages"), timeline(m)),
      m.warnings?.length ? h("section", {}, h("h2", {}, "Warnings"),
        h("ul", { id: "warnings" }, m.warnings.map((w) => h("li", {}, w)))) : null,
      webhooks(m)].filter(Boolean));
    for (const name of open) box.querySelector(`#stages > li[data-stage="${CSS.escape(name)}"] > details`)?.setAttribute("open", "");
    if (focused) box.querySelector(focused)?.focus({ preventScroll: true });  // a redraw must not drop the keyboard's place
  };
  return stream(`/jobs/${encodeURIComponent(jobId)}/events`, "manifest", draw, (source) => {
    if (box.textContent === "Loading…") {  // the stream never opened: say why
      api(`/jobs/${encodeURIComponent(jobId)}`).catch((err) => box.replaceChildren(fail(err)));
      return true;
    }
    // The stream ends once the job is finished; don't reconnect to it then.
    return source.readyState === EventSource.CLOSED || box.querySelector("p > .s-succeeded, p > .s-failed, p > .s-cancelled") !== null;
  });
}

// A selector for the focused control inside `box` that finds its twin after a redraw, or null.
function focusKey(box) {
  const active = document.activeElement;
  if (!active || !box.contains(active)) return null;
  if (active.id) return `#${CSS.escape(active.id)}`;
  if (active.dataset.series) return `button[data-series="${CSS.escape(active.dataset.series)}"]`;
  const stage = active.closest("#stages > li")?.dataset.stage;
  if (stage && active.tagName === "SUMMARY") return `#stages > li[data-stage="${CSS.escape(stage)}"] summary`;
  return null;
}

function timeline(m) {
  return h("ol", { class: "timeline", id: "stages" }, Object.entries(m.stages).map(([name, s]) => {
    const metrics = Object.entries(s.metrics ?? {}).filter(([, v]) => typeof v !== "object" || v === null);
    return h("li", { "data-stage": name, "data-status": s.status },
      h("div", { class: "stage-head" }, h("strong", {}, name), " ", statusBadge(s.status),
        s.attempts > 1 ? h("span", { class: "muted" }, ` attempt ${s.attempts}`) : null,
        m.cost?.seconds?.[name] !== undefined ? h("span", { class: "muted" }, ` · ${m.cost.seconds[name].toFixed(1)} s`) : null),
      h("div", { class: "stage-progress" },
        progressBar(s.status === "succeeded" ? 1 : s.progress?.fraction, `${name} progress`),
        h("span", { class: "muted" }, s.progress?.message ? ` ${s.progress.message}` : "",
          s.progress?.step != null ? ` (${s.progress.step}/${s.progress.total})` : "")),
      s.error ? h("p", { class: "error" }, h("strong", {}, s.error.code), `: ${s.error.message}`) : null,
      metrics.length ? h("details", {}, h("summary", {}, `Metrics (${metrics.length})`),
        h("dl", { class: "metrics" }, metrics.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]))) : null);
  }));
}

// The training curves; `hidden` (the series switched off in the legend) outlives each redraw.
function trainChart(m, hidden) {
  if (m.kind !== "train" || !m.stages.train) return null;
  const series = lossSeries(m.stages.train.metrics);
  const section = h("section", { id: "loss" }, h("h2", {}, "Training curves"));
  const draw = (focusName) => {
    section.replaceChildren(section.firstChild, series.length ? lossChart(series, { hidden, onToggle: draw })
      : h("p", { class: "muted" }, "No loss values yet."));
    if (typeof focusName === "string") section.querySelector(`button[data-series="${CSS.escape(focusName)}"]`)?.focus();
  };
  draw();
  return section;
}

function drawOutputs(m, box, play) {
  const url = (name) => `/jobs/${encodeURIComponent(m.job_id)}/outputs/${name}`;
  const items = [];
  // A composed job's matte: the person's alpha as a gray video, offered beside the video.
  const matte = m.outputs.matte ? h("span", { id: "matte" }, h("a", { href: url("matte"), download: "" }, "Download the matte"),
    h("span", { class: "muted" }, " (the person's alpha, as a gray video)")) : null;
  if (m.outputs.video) {
    items.push(h("figure", { class: "player" }, h("video", { id: "video", controls: true, preload: "metadata", src: url("video"), autoplay: play,
      poster: m.outputs.poster ? url("poster") : undefined, "aria-label": "The job's video" }),
      h("figcaption", {}, h("a", { href: url("video"), download: "" }, "Download the video"), matte ? " · " : null, matte)));
  } else if (matte) items.push(h("p", {}, matte));
  if (m.outputs.poster) items.push(h("figure", {}, h("img", { src: url("poster"), alt: "Poster frame", class: "thumb" }),
    h("figcaption", {}, "Poster")));
  if (m.outputs.contact_sheet) items.push(h("figure", {}, h("img", { src: url("contact_sheet"),
    alt: "Contact sheet of aligned faces", class: "sheet" }), h("figcaption", {}, "Contact sheet")));
  const splits = m.stages.align?.metrics?.splits;
  if (splits) {
    items.push(h("figure", { id: "splits" }, h("table", {}, h("caption", {}, "Dataset split (aligned faces, by time)"),
      h("thead", {}, h("tr", {}, Object.keys(splits).map((s) => h("th", { scope: "col" }, s)))),
      h("tbody", {}, h("tr", {}, Object.values(splits).map((n) => h("td", {}, String(n))))))));
  }
  box.replaceChildren(...(items.length ? items : [h("p", { class: "muted" }, "No outputs yet.")]));
}

// A finished train job's avatar: deployed from this job, or a button that deploys it (deploy: false briefs,
// or an avatar a later job replaced).
async function drawAvatar(m, trained, box) {
  const id = trained.avatar_id;
  let current = null;
  try { current = await api(`/avatars/${encodeURIComponent(id)}`); } catch (err) { if (err.status !== 404) throw err; }
  const fromHere = current?.job_id === m.job_id;
  const status = h("p", { id: "deploy-status", role: "status" }, fromHere
    ? `Avatar ${id} is deployed from this job.` : current
      ? `Avatar ${id} is deployed from another job (${current.job_id}); deploying replaces it with this one.`
      : `Avatar ${id} is trained but not deployed.`);
  const links = h("p", {}, h("a", { href: "#/avatars" }, "Avatars gallery"), " · ",
    h("a", { href: `#/new?avatar=${encodeURIComponent(id)}` }, `Make a video with ${id}`));
  const deploy = fromHere ? null : h("button", { type: "button", id: "deploy", onclick: async () => {
    deploy.disabled = true;
    try {
      await api(`/jobs/${encodeURIComponent(m.job_id)}/deploy`, { method: "POST" });
      status.textContent = `Avatar ${id} is deployed from this job.`;
      deploy.remove();
    } catch (err) {
      status.textContent = `Could not deploy ${id}: ${err.code}: ${err.message}`;
      deploy.disabled = false;
    }
  } }, `Deploy ${id}`);
  box.replaceChildren(h("h2", {}, "Avatar"), status, deploy, links);
  box.hidden = false;
}

function webhooks(m) {
  if (!m.webhooks?.length) return null;
  return h("section", {}, h("h2", {}, "Webhooks"), h("ul", { id: "webhooks" }, m.webhooks.map((w) =>
    h("li", {}, h("strong", {}, w.event), ` → ${w.url}: ${w.status}`,
      h("ul", {}, w.attempts.map((a) => h("li", {},
        `#${a.attempt} at ${new Date(a.at).toLocaleTimeString()}: ${a.status_code ?? a.error ?? "—"}`
        + (a.duration_ms != null ? ` (${Math.round(a.duration_ms)} ms)` : "")
        + (a.next_retry_s != null ? `, retry in ${a.next_retry_s.toFixed(1)} s` : ""))))))));
}

