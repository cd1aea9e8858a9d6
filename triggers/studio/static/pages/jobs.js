// The jobs list: live over SSE (/live/jobs), filtered by kind and status, with cancel and retry.
import { api } from "../api.js";
import { fmtAge, h, markNav, progressBar, show, statusBadge, stream } from "../dom.js";

export function jobsPage() {
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

