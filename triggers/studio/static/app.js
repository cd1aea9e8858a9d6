// The web studio: sign-in, the live jobs list, a job's detail, and a form to create a video.
import { api, ApiError, signIn, signOut } from "./api.js";
import { lossChart, lossSeries } from "./chart.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let cleanup = () => {};

// -- small DOM helpers
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
}
const fmtAge = (iso) => {
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
};
const pct = (f) => `${Math.round((f ?? 0) * 100)} %`;
const progressBar = (fraction, label) =>
  h("progress", { max: "1", value: String(fraction ?? 0), "aria-label": label }, pct(fraction));
const statusBadge = (status) => h("span", { class: `badge s-${status}` }, status);
function fail(error) {
  return h("p", { class: "error", role: "alert" },
    error instanceof ApiError ? `${error.code}: ${error.message}` : String(error));
}
function show(title, ...content) {
  main.replaceChildren(h("h1", {}, title), ...content);
  document.title = `${title} · videostudio`;
}
function markNav(name) {
  nav.querySelectorAll("[data-nav]").forEach((a) => {
    if (a.dataset.nav === name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
}

// A server-sent event stream, closed when the page changes.
function stream(url, event, onData, onEnd) {
  const source = new EventSource(url, { withCredentials: true });
  source.addEventListener(event, (e) => onData(JSON.parse(e.data)));
  source.addEventListener("error", () => { if (onEnd && onEnd(source)) source.close(); });
  return () => source.close();
}

// -- sign-in
function signInPage(message) {
  nav.hidden = true;
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password",
    required: true });
  const error = h("p", { id: "sign-in-error", class: "error", role: "alert", hidden: !message }, message ?? "");
  const form = h("form", { id: "sign-in", class: "card narrow", method: "post", action: "/session" },
    h("label", { for: "token" }, "API token"), input,
    h("p", { class: "muted" }, "The server's VIDEOSTUDIO_API_TOKEN. It is kept in an HttpOnly session cookie."),
    error, h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.hidden = true;
    try {
      await signIn(input.value);
      input.value = "";
      if (!location.hash || location.hash === "#/sign-in") location.hash = "#/jobs"; else route();
    } catch (err) {
      error.textContent = err instanceof ApiError && err.status === 401
        ? "That token is not valid. Check VIDEOSTUDIO_API_TOKEN and try again." : `Could not sign in: ${err.message}`;
      error.hidden = false;
      input.focus();
    }
  });
  show("Sign in", form);
  input.focus();
}

// -- jobs list
function jobsPage() {
  markNav("jobs");
  const params = new URLSearchParams(location.hash.split("?")[1] ?? "");
  const kind = h("select", { id: "filter-kind", name: "kind" },
    ["", "render", "train"].map((k) => h("option", { value: k, selected: params.get("kind") === k }, k || "any")));
  const status = h("select", { id: "filter-status", name: "status" },
    ["", "queued", "running", "succeeded", "failed", "cancelled"].map(
      (s) => h("option", { value: s, selected: params.get("status") === s }, s || "any")));
  const body = h("tbody");
  const empty = h("p", { class: "muted", id: "jobs-empty", hidden: true }, "No jobs match.");
  const notice = h("p", { class: "error", role: "alert", hidden: true });
  let jobs = [];
  const render = () => {
    const shown = jobs.filter((j) => (!kind.value || j.kind === kind.value) && (!status.value || j.status === status.value));
    empty.hidden = shown.length > 0;
    body.replaceChildren(...shown.map((j) => h("tr", { "data-job": j.job_id, "data-status": j.status },
      h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(j.job_id)}` }, j.job_id)),
      h("td", {}, j.kind),
      h("td", {}, statusBadge(j.status), j.error ? h("span", { class: "muted" }, ` ${j.error.code}`) : null),
      h("td", {}, j.stage ?? "—"),
      h("td", {}, j.status === "running" ? progressBar(j.progress, `${j.job_id} progress`) : (j.status === "succeeded" ? "100 %" : "—")),
      h("td", { title: j.created_at }, fmtAge(j.created_at)),
      h("td", {}, actions(j)))));
  };
  const actions = (j) => {
    if (j.status === "queued" || j.status === "running") {
      return h("button", { type: "button", class: "small", "data-action": "cancel",
        "aria-label": `Cancel ${j.job_id}`, onclick: () => act(j.job_id, "cancel") }, "Cancel");
    }
    if (j.status === "failed") {
      return h("button", { type: "button", class: "small", "data-action": "retry",
        "aria-label": `Retry ${j.job_id}`, onclick: () => act(j.job_id, "retry") }, "Retry");
    }
    return null;
  };
  const act = async (id, verb) => {
    notice.hidden = true;
    try { await api(`/jobs/${encodeURIComponent(id)}/${verb}`, { method: "POST" }); }
    catch (err) { notice.textContent = `${verb} ${id}: ${err.code}: ${err.message}`; notice.hidden = false; }
  };
  const refilter = () => {
    const q = new URLSearchParams();
    if (kind.value) q.set("kind", kind.value);
    if (status.value) q.set("status", status.value);
    history.replaceState(null, "", `#/jobs${q.size ? "?" + q : ""}`);
    render();
  };
  kind.addEventListener("change", refilter);
  status.addEventListener("change", refilter);
  show("Jobs",
    h("div", { class: "filters" },
      h("div", {}, h("label", { for: "filter-kind" }, "Kind"), kind),
      h("div", {}, h("label", { for: "filter-status" }, "Status"), status)),
    notice,
    h("div", { class: "table-wrap" }, h("table", { id: "jobs" },
      h("caption", { class: "sr-only" }, "Jobs, newest first, updated live"),
      h("thead", {}, h("tr", {}, ["Job", "Kind", "Status", "Stage", "Progress", "Age", "Actions"].map(
        (c) => h("th", { scope: "col" }, c)))),
      body)),
    empty);
  const tick = setInterval(render, 15000);  // ages move on
  const close = stream("/live/jobs", "jobs", (data) => { jobs = data; render(); });
  return () => { clearInterval(tick); close(); };
}

// -- one job
function jobPage(jobId) {
  markNav("jobs");
  const box = h("div", { id: "job" }, h("p", { class: "muted" }, "Loading…"));
  show(jobId, h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")), box);
  let lastOutputs = "";
  const media = h("div", { id: "outputs" });
  const draw = (m) => {
    const outputs = JSON.stringify(m.outputs);
    if (outputs !== lastOutputs) { lastOutputs = outputs; drawOutputs(m, media); }
    const open = new Set([...box.querySelectorAll("#stages > li > details[open]")].map((d) => d.parentElement.dataset.stage));
    box.replaceChildren(...[
      h("p", {}, statusBadge(m.status), ` ${m.kind} · created ${fmtAge(m.created_at)} ago`),
      m.error ? h("div", { class: "error", role: "alert", id: "job-error" },
        h("strong", {}, m.error.code), `: ${m.error.message}`) : null,
      trainChart(m),
      h("section", {}, h("h2", {}, "Outputs"), media),
      h("section", {}, h("h2", {}, "Stages"), timeline(m)),
      m.warnings?.length ? h("section", {}, h("h2", {}, "Warnings"),
        h("ul", { id: "warnings" }, m.warnings.map((w) => h("li", {}, w)))) : null,
      webhooks(m)].filter(Boolean));
    for (const name of open) box.querySelector(`#stages > li[data-stage="${CSS.escape(name)}"] > details`)?.setAttribute("open", "");
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

function trainChart(m) {
  if (m.kind !== "train" || !m.stages.train) return null;
  const series = lossSeries(m.stages.train.metrics);
  return h("section", { id: "loss" }, h("h2", {}, "Loss"),
    series.length ? lossChart(series) : h("p", { class: "muted" }, "No loss values yet."));
}

function drawOutputs(m, box) {
  const url = (name) => `/jobs/${encodeURIComponent(m.job_id)}/outputs/${name}`;
  const items = [];
  if (m.outputs.video) {
    items.push(h("figure", { class: "player" }, h("video", { id: "video", controls: true, preload: "metadata", src: url("video"),
      poster: m.outputs.poster ? url("poster") : undefined, "aria-label": "The job's video" }),
      h("figcaption", {}, h("a", { href: url("video"), download: "" }, "Download the video"))));
  }
  if (m.outputs.poster) items.push(h("figure", {}, h("img", { src: url("poster"), alt: "Poster frame", class: "thumb" }),
    h("figcaption", {}, "Poster")));
  if (m.outputs.contact_sheet) items.push(h("figure", {}, h("img", { src: url("contact_sheet"),
    alt: "Contact sheet of aligned faces", class: "sheet" }), h("figcaption", {}, "Contact sheet")));
  box.replaceChildren(...(items.length ? items : [h("p", { class: "muted" }, "No outputs yet.")]));
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

// -- create a video
function newPage() {
  markNav("new");
  const field = (id, label, input, help) => h("div", { class: "field" }, h("label", { for: id }, label), input,
    help ? h("p", { class: "muted", id: `${id}-help` }, help) : null);
  const prompt = h("textarea", { id: "prompt", name: "prompt", rows: "3", required: true, maxlength: "2000" });
  const preset = h("select", { id: "preset", name: "preset" },
    ["fast", "balanced", "quality"].map((p) => h("option", { value: p, selected: p === "fast" }, p)));
  const seed = h("input", { id: "seed", name: "seed", type: "number", value: "42", min: "0", step: "1", required: true });
  const model = h("input", { id: "model", name: "model", value: "tiny", required: true, "aria-describedby": "model-help" });
  const steps = h("input", { id: "steps", name: "steps", type: "number", min: "2", max: "500", step: "1", "aria-describedby": "steps-help" });
  const width = h("input", { id: "width", name: "width", type: "number", value: "848", min: "16", step: "16", required: true });
  const height = h("input", { id: "height", name: "height", type: "number", value: "480", min: "16", step: "16", required: true });
  const duration = h("input", { id: "duration", name: "duration_s", type: "number", min: "0.1", step: "0.1",
    "aria-describedby": "duration-help" });
  const error = h("p", { id: "create-error", class: "error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit" }, "Create video");
  const form = h("form", { id: "create", class: "card" },
    field("prompt", "Prompt", prompt),
    h("div", { class: "row" }, field("preset", "Preset", preset), field("seed", "Seed", seed)),
    h("div", { class: "row" },
      field("model", "Model", model, "tiny renders noise in seconds on a CPU; genmo/mochi-1-preview on a GPU."),
      field("steps", "Steps (optional)", steps, "Overrides the preset's steps.")),
    h("div", { class: "row" }, field("width", "Width", width), field("height", "Height", height)),
    field("duration", "Duration in seconds (optional)", duration, "Overrides the preset's duration."),
    error, submit);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.hidden = true;
    submit.disabled = true;
    const brief = { kind: "render", prompt: prompt.value, preset: preset.value, seed: Number(seed.value), model: model.value };
    if (steps.value) brief.steps = Number(steps.value);
    brief.width = Number(width.value);
    brief.height = Number(height.value);
    if (duration.value) brief.duration_s = Number(duration.value);
    try {
      // inbox/<a slug of the prompt>-<random>.json: a readable job id, never a clash with another brief's name
      const slug = prompt.value.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "video";
      const name = `${slug}-${crypto.getRandomValues(new Uint32Array(1))[0].toString(16)}`;
      const job = await api(`/briefs?name=${encodeURIComponent(name)}`, { method: "POST", body: brief });
      location.hash = `#/jobs/${encodeURIComponent(job.job_id)}`;
    } catch (err) {
      error.textContent = `${err.code ?? "error"}: ${err.message}`;
      error.hidden = false;
      submit.disabled = false;
    }
  });
  show("Create video", form);
  prompt.focus();
}

// -- avatars
function avatarsPage() {
  markNav("avatars");
  const list = h("ul", { id: "avatars", class: "gallery" }, h("li", { class: "muted" }, "Loading…"));
  const notice = h("p", { class: "error", role: "alert", hidden: true });
  show("Avatars", notice, list);
  let live = true;
  const load = async () => {
    let avatars;
    try { avatars = await api("/avatars"); } catch (err) { list.replaceChildren(h("li", {}, fail(err))); return; }
    if (!live) return;
    if (!avatars.length) { list.replaceChildren(h("li", { class: "muted", id: "avatars-empty" }, "No avatars deployed yet.")); return; }
    list.replaceChildren(...avatars.map(avatarCard));
  };
  const avatarCard = (a) => {
    const m = a.metrics ?? {};
    const sync = m.lip_sync_test ?? m.lip_sync;
    const facts = [["Backend", a.backend], ["Quality", m.quality_score != null ? `${m.quality_score} / 100` : "—"],
      ["Base model", a.base_model], ["Talks", a.talks ? "yes" : "no"]];
    if (sync) facts.push(["Lip-sync offset", `${sync.offset_frames} frames`], ["Lip-sync distance", String(sync.min_dist)],
      ["Lip-sync confidence", String(sync.confidence)]);
    const preview = h("div", { class: "preview" });
    const remove = h("button", { type: "button", class: "small danger", "data-action": "delete",
      "aria-label": `Delete avatar ${a.avatar_id}` }, "Delete");
    remove.addEventListener("click", async () => {
      if (!window.confirm(`Delete avatar ${a.avatar_id}? Briefs can no longer render it.`)) return;
      notice.hidden = true;
      try { await api(`/avatars/${encodeURIComponent(a.avatar_id)}`, { method: "DELETE" }); await load(); }
      catch (err) { notice.textContent = `delete ${a.avatar_id}: ${err.code}: ${err.message}`; notice.hidden = false; }
    });
    api(`/jobs/${encodeURIComponent(a.job_id)}`).then((job) => {
      if (job.outputs?.video) {
        preview.append(h("video", { controls: true, preload: "metadata", "aria-label": `Preview of ${a.avatar_id}`,
          src: `/jobs/${encodeURIComponent(a.job_id)}/outputs/video` }));
      }
    }, () => {});
    return h("li", { class: "card", "data-avatar": a.avatar_id },
      h("h2", {}, a.avatar_id), preview,
      h("dl", { class: "metrics" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      h("p", {}, h("a", { href: `#/jobs/${encodeURIComponent(a.job_id)}` }, "Train job"), " ", remove));
  };
  load();
  return () => { live = false; };
}

// -- routing
async function route() {
  cleanup();
  cleanup = () => {};
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/jobs";
  try {
    await api("/jobs?limit=1");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return signInPage();
    return show("videostudio", fail(err));
  }
  nav.hidden = false;
  const parts = path.split("/").filter(Boolean);
  let stop;
  if (parts[0] === "jobs" && parts[1]) stop = jobPage(decodeURIComponent(parts[1]));
  else if (parts[0] === "new") stop = newPage();
  else if (parts[0] === "avatars") stop = avatarsPage();
  else stop = jobsPage();
  cleanup = stop ?? (() => {});
  main.focus({ preventScroll: true });
}

document.getElementById("sign-out").addEventListener("click", async () => {
  cleanup();
  cleanup = () => {};
  await signOut();
  if (location.hash === "#/sign-in") signInPage(); else location.hash = "#/sign-in";
});
window.addEventListener("hashchange", route);
route();
