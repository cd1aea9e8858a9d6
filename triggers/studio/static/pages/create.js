// Create video: a Mochi video from a prompt, or a talking avatar speaking a typed script or an uploaded
// recording, either with a new background (the brief's `background:`, put in by the compose stage). Fields are
// checked against the API's RenderBrief schema as you type; the job page plays the result when it is done.
import { api, serverInfo, upload } from "../api.js";
import { briefName, fail, field, fmtBytes, h, markField, markNav, progressBar, show } from "../dom.js";
import { BriefForm, checkUpload, controlFor, helpFor } from "../forms.js";
import { briefSchemas } from "../schema.js";

// The background shapes of schemas/background.py, by the key that tells them apart, and their schemas' names.
const SHAPES = { color: "ColorBackground", blur: "BlurBackground", image: "ImageBackground", video: "VideoBackground",
  matte: "MatteBackground" };
// '#0b5fff' or '#0bf' as an <input type=color> value ('#rrggbb'), or null.
const fullHex = (text) => {
  const m = /^#?([0-9a-f]{3}|[0-9a-f]{6})$/i.exec(text.trim());
  return m ? `#${(m[1].length === 3 ? [...m[1]].map((c) => c + c).join("") : m[1]).toLowerCase()}` : null;
};
// A brief as multipart fields: a nested field by its dotted name (`background.color`), as POST /briefs/speech reads it.
const formFields = (doc, prefix = "") => Object.entries(doc).flatMap(([k, v]) =>
  v !== null && typeof v === "object" ? formFields(v, `${prefix}${k}.`) : [[`${prefix}${k}`, String(v)]]);

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

    // -- the background, for either mode
    const shapeOf = (kind, name) => schemas[SHAPES[kind]].properties[name];
    const backdropRadio = (value, label) => h("label", { class: "choice" },
      h("input", { type: "radio", name: "background", value, checked: value === "" }), ` ${label}`);
    const backdrops = h("fieldset", { class: "choices", id: "background", "aria-describedby": "background-help" },
      h("legend", {}, "Background"),
      backdropRadio("", "None"), backdropRadio("color", "Colour"), backdropRadio("blur", "Blur"),
      backdropRadio("image", "Image"), backdropRadio("video", "Video"), backdropRadio("matte", "Matte (transparent)"),
      h("p", { class: "muted help", id: "background-help" }, "What goes behind the person once the video is made: "
        + "the job then has a compose stage (it needs a person in the picture)."));
    const backdrop = () => backdrops.querySelector("input:checked").value;
    const color = form.bind("background.color", h("input", { id: "background-color", name: "background.color",
      value: "#00b140", autocomplete: "off", spellcheck: "false" }));
    const picker = h("input", { id: "background-picker", type: "color", value: "#00b140" });
    picker.addEventListener("input", () => { color.value = picker.value; color.dispatchEvent(new Event("input")); });
    color.addEventListener("input", () => { const hex = fullHex(color.value); if (hex) picker.value = hex; });
    const blur = controlFor(schemas, "background-blur", shapeOf("blur", "blur")).control;
    blur.value = "12";
    form.bind("background.blur", blur, "number");
    const image = form.bind("background.image", h("input", { id: "background-image", name: "background.image",
      autocomplete: "off", spellcheck: "false", placeholder: "uploads/backdrop.png" }));
    const fit = controlFor(schemas, "background-fit", shapeOf("image", "fit")).control;
    form.bind("background.fit", fit);
    const clip = form.bind("background.video", h("input", { id: "background-video", name: "background.video",
      autocomplete: "off", spellcheck: "false", placeholder: "uploads/backdrop.mp4" }));
    const format = form.bind("background.format", h("select", { id: "background-format", name: "background.format" },
      h("option", { value: "webm", selected: true }, "webm: VP9 with alpha"), h("option", { value: "mov" }, "mov: ProRes 4444 with alpha")));
    const backdropParts = {
      color: h("div", { id: "background-color-part", hidden: true }, h("div", { class: "row" },
        field("background-picker", "Pick a colour", picker),
        field("background-color", "Colour", color, helpFor(schemas, shapeOf("color", "color"))))),
      blur: h("div", { id: "background-blur-part", hidden: true },
        field("background-blur", "Blur radius", blur, helpFor(schemas, shapeOf("blur", "blur")))),
      image: h("div", { id: "background-image-part", hidden: true }, h("div", { class: "row" },
        field("background-image", "Image's bucket key", image, helpFor(schemas, shapeOf("image", "image"))),
        field("background-fit", "Fit", fit, "cover fills the frame (cropped); contain fits inside it, on black."))),
      video: h("div", { id: "background-video-part", hidden: true },
        field("background-video", "Clip's bucket key", clip, helpFor(schemas, shapeOf("video", "video")))),
      matte: h("div", { id: "background-matte-part", hidden: true },
        field("background-format", "Format", format, "The person over transparency; the job also keeps the matte.")),
    };
    backdrops.append(...Object.values(backdropParts));
    form.shape("background", () => SHAPES[backdrop()] ?? null);

    const seed = form.bind("seed", h("input", { id: "seed", name: "seed", type: "number", value: "42", min: "0", step: "1" }), "number");
    const bar = progressBar(0, "Upload progress", "upload-progress");
    const uploading = h("div", { id: "uploading", hidden: true }, bar);
    const submit = h("button", { type: "submit" }, "Create video");
    const node = h("form", { id: "create", class: "card", novalidate: true }, modes, promptPart, talkingPart,
      backdrops, field("seed", "Seed", seed), summary, uploading, submit);

    const switchParts = () => {
      promptPart.hidden = mode() !== "prompt";
      talkingPart.hidden = mode() !== "talking";
      scriptPart.hidden = source() !== "script";
      audioPart.hidden = source() !== "audio";
      const shape = backdrop();
      for (const [kind, part] of Object.entries(backdropParts)) part.hidden = kind !== shape;
      // A chosen shape is always there, so its missing key is marked; a matte is `matte: true` and its format.
      form.base(shape ? { kind: "render", background: shape === "matte" ? { matte: true } : {} } : { kind: "render" });
      form.check();
    };
    modes.addEventListener("change", switchParts);
    sources.addEventListener("change", switchParts);
    backdrops.addEventListener("change", (e) => { if (e.target.name === "background") switchParts(); });

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
          for (const [k, v] of formFields(brief)) if (k !== "kind") body.append(k, v);
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
