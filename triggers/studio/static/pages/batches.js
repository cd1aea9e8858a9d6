// Batches: the list (GET /batches, polled) with counts and progress, and one batch's items linking to their jobs.
import { api } from "../api.js";
import { fail, fmtAge, h, markNav, pct, progressBar, show, statusBadge } from "../dom.js";

const POLL_MS = 2000;
const fmtEta = (s) => (s === null || s === undefined ? "—" : s < 120 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`);
const counts = (c) => `${c.succeeded} ok · ${c.failed} failed · ${c.cancelled} cancelled · ${c.running} running · ${c.queued} queued`;

// Polls `load` every POLL_MS until `done(data)`; returns the function that stops it.
function poll(load, draw, done = () => false) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try {
      const data = await load();
      if (stopped) return;
      draw(data, null);
      if (done(data)) return;
    } catch (err) { if (!stopped) draw(null, err); }
    if (!stopped) timer = setTimeout(tick, POLL_MS);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

export function batchesPage() {
  markNav("batches");
  const body = h("tbody");
  const empty = h("p", { class: "muted", id: "batches-empty", hidden: true },
    "No batches yet. Drop a *.batch.csv, *.batch.jsonl or *.batch.yaml into inbox/, or POST /batches.");
  const notice = h("p", { class: "error", role: "alert", hidden: true });
  show("Batches", notice,
    h("div", { class: "table-wrap" }, h("table", { id: "batches" },
      h("caption", { class: "sr-only" }, "Batches, newest first"),
      h("thead", {}, h("tr", {}, ["Batch", "Status", "Items", "Progress", "ETA", "Age"].map(
        (c) => h("th", { scope: "col" }, c)))),
      body)),
    empty);
  return poll(() => api("/batches"), (batches, err) => {
    notice.hidden = !err;
    if (err) { notice.textContent = `${err.code}: ${err.message}`; return; }
    empty.hidden = batches.length > 0;
    body.replaceChildren(...batches.map((b) => h("tr", { "data-batch": b.batch_id, "data-status": b.status },
      h("td", {}, h("a", { href: `#/batches/${encodeURIComponent(b.batch_id)}` }, b.batch_id)),
      h("td", {}, statusBadge(b.status), b.error ? h("span", { class: "muted" }, ` ${b.error.code}`) : null),
      h("td", {}, `${b.counts.queued + b.counts.running + b.counts.succeeded + b.counts.failed + b.counts.cancelled}`,
        h("span", { class: "muted" }, ` (${counts(b.counts)})`)),
      h("td", {}, progressBar(b.progress.fraction, `${b.batch_id} progress`)),
      h("td", {}, fmtEta(b.progress.eta_s)),
      h("td", { title: b.created_at }, fmtAge(b.created_at)))));
  });
}

export function batchPage(batchId) {
  markNav("batches");
  const box = h("div", { id: "batch" }, h("p", { class: "muted" }, "Loading…"));
  const notice = h("p", { class: "error", role: "alert", hidden: true });
  const cancel = h("button", { type: "button", id: "batch-cancel", hidden: true, onclick: async () => {
    notice.hidden = true;
    try { await api(`/batches/${encodeURIComponent(batchId)}/cancel`, { method: "POST" }); }
    catch (err) { notice.textContent = `cancel: ${err.code}: ${err.message}`; notice.hidden = false; }
  } }, "Cancel batch");
  show(batchId, h("p", {}, h("a", { href: "#/batches" }, "← All batches")), notice, cancel, box);
  return poll(() => api(`/batches/${encodeURIComponent(batchId)}`), (m, err) => {
    if (err) { box.replaceChildren(fail(err)); return; }
    cancel.hidden = m.status === "completed" || m.status === "failed" || m.cancel_requested;
    box.replaceChildren(...[
      h("p", {}, statusBadge(m.status), ` ${m.name} · ${m.input.key} · created ${fmtAge(m.created_at)} ago`),
      m.error ? h("div", { class: "error", role: "alert", id: "batch-error" },
        h("strong", {}, m.error.code), `: ${m.error.message}`) : null,
      h("p", { id: "batch-counts" }, counts(m.counts)),
      h("p", {}, progressBar(m.progress.fraction, "Batch progress", "batch-progress"),
        ` ${pct(m.progress.fraction)} · ETA ${fmtEta(m.progress.eta_s)}`),
      h("section", {}, h("h2", {}, "Items"), h("div", { class: "table-wrap" }, itemsTable(m.items))),
    ].filter(Boolean));
  }, (m) => m.status === "completed" || m.status === "failed");
}

function itemsTable(items) {
  const row = (i) => h("tr", { "data-line": String(i.line), "data-status": i.status },
    h("td", {}, String(i.line)),
    h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(i.job_id)}` }, i.job_id)),
    h("td", {}, statusBadge(i.status)),
    h("td", {}, i.error ? h("span", {}, h("strong", {}, i.error.code), `: ${i.error.message}`) : "—"));
  return h("table", { id: "batch-items" },
    h("caption", { class: "sr-only" }, "The batch's items, in file order"),
    h("thead", {}, h("tr", {}, ["Line", "Job", "Status", "Error"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, items.map(row)));
}
