// New avatar: pick a backend and its options (checked against the API's TrainBrief schema as you type),
// then upload the training video to POST /train with a progress bar. The upload limit is checked before
// anything is sent; the server enforces it again while the body streams in and keeps nothing partial.
import { serverInfo, upload } from "../api.js";
import { fail, field, fmtBytes, h, markField, markNav, progressBar, show } from "../dom.js";
import { BriefForm, checkUpload, controlFor, helpFor, labelFor } from "../forms.js";
import { briefSchemas, plainSchema } from "../schema.js";

// Fields the page sets itself, or shows on its own, rather than as generated options.
const OWN_FIELDS = new Set(["kind", "avatar", "video", "backend", "webhook"]);
const controlId = (path) => `opt-${path.replaceAll(".", "-")}`;

export function newAvatarPage() {
  markNav("new-avatar");
  show("New avatar", h("p", { class: "muted" }, "Loading…"));
  let live = true;
  let request = null;
  Promise.all([serverInfo(), briefSchemas()]).then(([info, schemas]) => { if (live) build(info, schemas); },
    (err) => { if (live) show("New avatar", fail(err)); });
  const build = (info, schemas) => {
    const train = schemas.TrainBrief;
    const summary = h("ul", { id: "new-avatar-errors", class: "error summary", "aria-live": "polite", tabindex: "-1", hidden: true });
    const form = new BriefForm(schemas, "TrainBrief", summary).base({ kind: "train", video: "uploads/training.mp4" });

    const avatar = form.bind("avatar", h("input", { id: "avatar-id", name: "avatar", required: true, autocomplete: "off",
      maxlength: "64", spellcheck: "false" }));
    const backendNames = info.backends.map((b) => b.name);
    const backend = form.bind("backend", h("select", { id: "backend", name: "backend" }, info.backends.map((b) =>
      h("option", { value: b.name, selected: b.name === (train.properties.backend.default ?? backendNames[0]) }, b.name))));
    const backendHelp = h("p", { class: "muted help", id: "backend-summary" });
    const video = h("input", { id: "video-file", name: "video", type: "file", required: true,
      accept: info.video_suffixes.join(",") });
    const webhook = form.bind("webhook.url", h("input", { id: "webhook-url", name: "webhook", type: "url",
      autocomplete: "off", placeholder: "https://example.com/hook" }));

    const optionField = (path, property) => {
      const { control, type } = controlFor(schemas, controlId(path), property);
      form.bind(path, control, type);
      return field(controlId(path), labelFor(schemas, path.split(".").at(-1), property), control, helpFor(schemas, property));
    };
    const fieldsOf = (names, properties, prefix = "") => names.flatMap((name) => {
      const property = properties[name];
      const schema = plainSchema(schemas, property);
      if (schema.type === "object" && schema.properties) {  // a group of options (wav2lip:)
        return Object.keys(schema.properties).map((inner) => optionField(`${prefix}${name}.${inner}`, schema.properties[inner]));
      }
      return [optionField(`${prefix}${name}`, property)];
    });
    const specific = new Set(info.backends.flatMap((b) => b.brief_options));
    const common = Object.keys(train.properties).filter((n) => !OWN_FIELDS.has(n) && !specific.has(n) && n !== "seed")
      .concat(["seed"]);
    const groups = info.backends.map((b) => h("fieldset", { class: "options", "data-backend": b.name },
      h("legend", {}, `${b.name} options`),
      h("div", { class: "grid" }, fieldsOf(b.brief_options.filter((n) => train.properties[n]), train.properties))));
    const showBackend = () => {
      const chosen = info.backends.find((b) => b.name === backend.value);
      backendHelp.textContent = chosen ? `${chosen.summary}${chosen.talks ? " It speaks scripts and recordings." : ""}` : "";
      for (const g of groups) g.hidden = g.dataset.backend !== backend.value;
    };
    backend.addEventListener("change", showBackend);

    const checkVideo = () => checkUpload(video, { suffixes: info.video_suffixes, limit: info.max_upload_bytes,
      missing: "choose the training video" });
    video.addEventListener("change", checkVideo);

    const bar = progressBar(0, "Upload progress", "upload-progress");
    const sent = h("span", { id: "upload-sent", class: "muted" });
    const uploading = h("div", { id: "uploading", hidden: true }, bar, " ", sent);
    const submit = h("button", { type: "submit" }, "Upload and train");
    const cancel = h("button", { type: "button", class: "secondary", hidden: true, onclick: () => request?.abort() },
      "Cancel upload");
    const formNode = h("form", { id: "new-avatar", class: "card", novalidate: true },
      field("avatar-id", "Avatar id", avatar, "Letters, digits, _ . - (starting with a letter or digit): names the avatar in briefs."),
      field("backend", "Backend", backend), backendHelp,
      field("video-file", "Training video", video,
        `30–600 s of one person facing the camera, with sound (${info.video_suffixes.join(", ")}; at most ${fmtBytes(info.max_upload_bytes)}).`),
      h("fieldset", { class: "options" }, h("legend", {}, "Training"), h("div", { class: "grid" }, fieldsOf(common, train.properties))),
      groups,
      field("webhook-url", "Webhook URL (optional)", webhook, "Signed POSTs when the job finishes."),
      summary, uploading, h("div", { class: "buttons" }, submit, cancel));
    formNode.addEventListener("submit", async (e) => {
      e.preventDefault();
      const fieldsOk = form.check({ all: true });
      const videoOk = checkVideo();
      if (!fieldsOk || !videoOk) { form.focusFirstInvalid(); if (fieldsOk) video.focus(); return; }
      const body = new FormData();
      const flat = (obj, prefix = "") => Object.entries(obj).forEach(([k, v]) => {
        if (v !== null && typeof v === "object") flat(v, `${prefix}${k}.`); else body.append(`${prefix}${k}`, String(v));
      });
      const { kind, video: _placeholder, webhook: hook, ...fields } = form.document(form.fixed);
      flat(fields);
      if (hook) body.append("webhook", JSON.stringify(hook));
      body.append("video", video.files[0]);
      submit.disabled = true;
      cancel.hidden = false;
      uploading.hidden = false;
      const total = video.files[0].size;
      sent.textContent = `0 of ${fmtBytes(total)}`;
      request = null;
      try {
        const job = await upload("/train", body, (loaded, all) => {
          bar.value = loaded / all;
          bar.textContent = `${Math.round((100 * loaded) / all)} %`;
          sent.textContent = `${fmtBytes(Math.min(loaded, total))} of ${fmtBytes(total)}`;
        }, (xhr) => { request = xhr; });
        if (live) location.hash = `#/jobs/${encodeURIComponent(job.job_id)}`;
      } catch (err) {
        if (!live) return;
        uploading.hidden = true;
        if (err.status === 413) markField(video, `${err.message}: nothing was kept`);
        else form.showServer(err);
      } finally {
        submit.disabled = false;
        cancel.hidden = true;
      }
    });
    show("New avatar", formNode);
    showBackend();
    avatar.focus();
  };
  return () => { live = false; request?.abort(); };
}
