// Create video: a Mochi video from a prompt, or a talking avatar speaking a typed script or an uploaded
// recording. Fields are checked against the API's RenderBrief schema as you type; the job page plays the
// result when it is done.
import { api, serverInfo, upload } from "../api.js";
import { briefName, fail, field, fmtBytes, h, markField, markNav, progressBar, show } from "../dom.js";
import { BriefForm, checkUpload } from "../forms.js";
import { briefSchemas } from "../schema.js";

export function createPage() {
  markNav("new");
  show("Create video", h("p", { class: "muted" }, "Loading…"));
  let live = true;
  let request = null;
  const wanted = new URLSearchParams(location.hash.split("?")[1] ?? "").get("avatar");
  Promise.all([serverInfo(), briefSchemas(), api("/avatars")]).then(([info, schemas, avatars]) => {
    if (live) build(info, schemas, avatars);
  }, (err) => { if (live) show("Create video", fail(err)); });

  const build = (info, schemas, avatars) => {
    const summary = h("ul", { id: "create-errors", class: "error summary", "aria-live": "polite", tabindex: "-1", hidden: true });
    const form = new BriefForm(schemas, "RenderBrief", summary).base({ kind: "render" });
    const talkers = avatars.filter((a) => a.talks);
    const painters = avatars.filter((a) => !a.talks);
    const startTalking = wanted ? talkers.some((a) => a.avatar_id === wanted) : false;

    // What to make
    const modeRadio = (value, label, checked) => h("label", { class: "choice" },
      h("input", { type: "radio", name: "mode", value, checked }), ` ${label}`);
    const modes = h("fieldset", { class: "choices", id: "mode" }, h("legend", {}, "What to make"),
      modeRadio("prompt", "A video from a prompt (Mochi)", !startTalking),
      modeRadio("talking", "A talking avatar", startTalking));
    const mode = () => modes.querySelector("input:checked").value;

    // -- from a prompt
    const prompt = form.bind("prompt", h("textarea", { id: "prompt", name: "prompt", rows: "3", maxlength: "2000" }));
    const preset = form.bind("preset", h("select", { id: "preset", name: "preset" },
      ["fast", "balanced", "quality"].map((p) => h("option", { value: p, selected: p === "fast" }, p))));
    const model = form.bind("model", h("input", { id: "model", name: "model", value: "tiny" }));
    const steps = form.bind("steps", h("input", { id: "steps", name: "steps", type: "number", min: "2", max: "500", step: "1" }), "number");
    const width = form.bind("width", h("input", { id: "width", name: "width", type: "number", value: "848", min: "16", step: "16" }), "number");
    const height = form.bind("height", h("input", { id: "height", name: "height", type: "number", value: "480", min: "16", step: "16" }), "number");
    const duration = form.bind("duration_s", h("input", { id: "duration", name: "duration_s", type: "number", min: "0.1", step: "0.1" }), "number");
    const lora = form.bind("avatar", h("select", { id: "prompt-avatar", name: "avatar" }, h("option", { value: "" }, "none"),
      painters.map((a) => h("option", { value: a.avatar_id, selected: a.avatar_id === wanted }, a.avatar_id))));
    const promptPart = h("div", { id: "prompt-part" },
      field("prompt", "Prompt", prompt),
      h("div", { class: "row" }, field("preset", "Preset", preset), field("model", "Model", model,
        "tiny renders noise in seconds on a CPU; genmo/mochi-1-preview on a GPU.")),
      h("div", { class: "row" }, field("steps", "Steps (optional)", steps, "Overrides the preset's steps."),
        field("duration", "Duration in seconds (optional)", duration, "Overrides the preset's duration.")),
      h("div", { class: "row" }, field("width", "Width", width), field("height", "Height", height)),
      field("prompt-avatar", "Avatar (optional)", lora, painters.length ? "A mochi-lora avatar to put in the video."
        : "No mochi-lora avatar is deployed."));

    // -- a talking avatar
    const talker = form.bind("avatar", h("select", { id: "talking-avatar", name: "avatar" },
      talkers.length ? talkers.map((a) => h("option", { value: a.avatar_id, selected: a.avatar_id === wanted }, a.avatar_id))
        : h("option", { value: "" }, "no talking avatar is deployed")));
    const sources = h("fieldset", { class: "choices", id: "speech-source" }, h("legend", {}, "Speech"),
      h("label", { class: "choice" }, h("input", { type: "radio", name: "speech", value: "script", checked: true }), " Type a script"),
      h("label", { class: "choice" }, h("input", { type: "radio", name: "speech", value: "audio" }), " Upload a recording"));
    const source = () => sources.querySelector("input:checked").value;
    const script = form.bind("script", h("textarea", { id: "script", name: "script", rows: "5",
      maxlength: String(info.max_script_chars) }));
    const counter = h("span", { id: "script-count", class: "muted", "aria-live": "polite" });
    const countScript = () => { counter.textContent = `${script.value.length} of ${info.max_script_chars} characters`; };
    script.addEventListener("input", countScript);
    const voice = form.bind("voice", h("input", { id: "voice", name: "voice", autocomplete: "off", placeholder: "en_US-joe-medium" }));
    const audio = h("input", { id: "audio-file", name: "audio", type: "file", accept: info.audio_suffixes.join(",") });
    const scriptPart = h("div", { id: "script-part" }, field("script", "Script", script), counter,
      field("voice", "Voice (optional)", voice, "A piper voice id or a local .onnx path on the server; the bundled voice by default."));
    const audioPart = h("div", { id: "audio-part", hidden: true }, field("audio-file", "Recording", audio,
      `${info.audio_suffixes.join(", ")}; at most 10 minutes and ${fmtBytes(info.max_upload_bytes)}.`));
    const talkingPart = h("div", { id: "talking-part", hidden: true },
      field("talking-avatar", "Avatar", talker, "Talking avatars (wav2lip) deployed on this server."), sources, scriptPart, audioPart);

    const seed = form.bind("seed", h("input", { id: "seed", name: "seed", type: "number", value: "42", min: "0", step: "1" }), "number");
    const bar = progressBar(0, "Upload progress", "upload-progress");
    const uploading = h("div", { id: "uploading", hidden: true }, bar);
    const submit = h("button", { type: "submit" }, "Create video");
    const node = h("form", { id: "create", class: "card", novalidate: true }, modes, promptPart, talkingPart,
      field("seed", "Seed", seed), summary, uploading, submit);

    const switchParts = () => {
      promptPart.hidden = mode() !== "prompt";
      talkingPart.hidden = mode() !== "talking";
      scriptPart.hidden = source() !== "script";
      audioPart.hidden = source() !== "audio";
      form.check();
    };
    modes.addEventListener("change", switchParts);
    sources.addEventListener("change", switchParts);

    const checkAudio = () => checkUpload(audio, { suffixes: info.audio_suffixes, limit: info.max_upload_bytes,
      missing: "choose a recording" });
    audio.addEventListener("change", checkAudio);

    node.addEventListener("submit", async (e) => {
      e.preventDefault();
      const talking = mode() === "talking";
      const brief = form.document(form.fixed);
      let ok = form.check({ all: true });
      if (!talking && !brief.prompt) { markField(prompt, "write a prompt"); ok = false; }
      if (talking && !brief.avatar) { markField(talker, "deploy a talking avatar first (Avatars)"); ok = false; }
      if (talking && source() === "script" && !brief.script) { markField(script, "type what the avatar says"); ok = false; }
      if (talking && source() === "audio" && !checkAudio()) ok = false;
      if (!ok) { form.focusFirstInvalid(); return; }
      submit.disabled = true;
      try {
        let job;
        if (talking && source() === "audio") {
          const body = new FormData();
          for (const [k, v] of Object.entries(brief)) if (k !== "kind") body.append(k, String(v));
          body.append("audio", audio.files[0]);
          uploading.hidden = false;
          job = await upload("/briefs/speech", body, (loaded, all) => { bar.value = loaded / all; },
            (xhr) => { request = xhr; });
        } else {
          const name = briefName(talking ? `${brief.avatar} ${brief.script}` : brief.prompt, "video");
          job = await api(`/briefs?name=${encodeURIComponent(name)}`, { method: "POST", body: brief });
        }
        if (live) location.hash = `#/jobs/${encodeURIComponent(job.job_id)}?play`;
      } catch (err) {
        if (!live) return;
        uploading.hidden = true;
        if (err.status === 413 && talking) markField(audio, `${err.message}: nothing was kept`);
        else form.showServer(err);
        submit.disabled = false;
      }
    });
    show("Create video", node);
    switchParts();
    countScript();
    (startTalking ? script : prompt).focus();
  };
  return () => { live = false; request?.abort(); };
}
