// The avatars gallery: preview video, backend, quality and lip-sync metrics; deploy and delete.
import { api } from "../api.js";
import { fail, h, markNav, show } from "../dom.js";

export function avatarsPage() {
  markNav("avatars");
  const list = h("ul", { id: "avatars", class: "gallery" }, h("li", { class: "muted" }, "Loading…"));
  const waiting = h("ul", { id: "undeployed", class: "gallery" });
  const waitingBox = h("section", { hidden: true }, h("h2", {}, "Trained, not deployed"), waiting);
  const notice = h("p", { class: "error", role: "alert", hidden: true });
  show("Avatars", notice, h("p", {}, h("a", { href: "#/new-avatar" }, "Train a new avatar")), list, waitingBox);
  let live = true;
  const load = async () => {
    let avatars;
    try { avatars = await api("/avatars"); } catch (err) { list.replaceChildren(h("li", {}, fail(err))); return; }
    if (!live) return;
    if (!avatars.length) list.replaceChildren(h("li", { class: "muted", id: "avatars-empty" }, "No avatars deployed yet."));
    else list.replaceChildren(...avatars.map(avatarCard));
    loadUndeployed(new Set(avatars.map((a) => a.avatar_id))).catch((err) => waiting.replaceChildren(h("li", {}, fail(err))));
  };
  // Succeeded train jobs whose avatar is not deployed at all (a `deploy: false` brief, or one deleted since).
  const loadUndeployed = async (deployed) => {
    const jobs = await api("/jobs?kind=train&status=succeeded&limit=50");
    const manifests = await Promise.all(jobs.map((j) => api(`/jobs/${encodeURIComponent(j.job_id)}`).catch(() => null)));
    const seen = new Set();
    const ready = manifests.filter((m) => {
      const id = m?.stages?.train?.handoff?.avatar_id;
      if (!id || deployed.has(id) || seen.has(id)) return false;  // newest first: one card per avatar id
      seen.add(id);
      return true;
    });
    if (!live) return;
    waitingBox.hidden = ready.length === 0;
    waiting.replaceChildren(...ready.map(undeployedCard));
  };
  const undeployedCard = (m) => {
    const id = m.stages.train.handoff.avatar_id;
    const deploy = h("button", { type: "button", class: "small", "data-action": "deploy",
      "aria-label": `Deploy avatar ${id} from job ${m.job_id}` }, "Deploy");
    deploy.addEventListener("click", async () => {
      notice.hidden = true;
      deploy.disabled = true;
      try { await api(`/jobs/${encodeURIComponent(m.job_id)}/deploy`, { method: "POST" }); await load(); }
      catch (err) { notice.textContent = `deploy ${id}: ${err.code}: ${err.message}`; notice.hidden = false; deploy.disabled = false; }
    });
    return h("li", { class: "card", "data-undeployed": id }, h("h3", {}, id),
      h("p", {}, "Trained by ", h("a", { href: `#/jobs/${encodeURIComponent(m.job_id)}` }, m.job_id)), deploy);
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
      h("p", { class: "actions" }, h("a", { href: `#/jobs/${encodeURIComponent(a.job_id)}` }, "Train job"),
        h("a", { href: `#/new?avatar=${encodeURIComponent(a.avatar_id)}` }, a.talks ? "Make it talk" : "Make a video"),
        remove));
  };
  load();
  return () => { live = false; };
}

