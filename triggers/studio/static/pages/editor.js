// Brief editor: a brief as YAML or JSON, checked against the API's schema as you type (errors listed by
// line and field), then submitted to POST /briefs as written (comments and all), exactly as if dropped into
// inbox/. The YAML parser is loaded only on this page.
import { api } from "../api.js";
import { briefName, field, h, markNav, show } from "../dom.js";
import { briefSchemas, schemaErrors, serverErrors, validatorFor } from "../schema.js";

const STARTERS = {
  prompt: "# A Mochi video from a prompt (model: tiny renders noise in seconds on a CPU)\nkind: render\n"
    + "prompt: A lighthouse at dusk, waves rolling in\npreset: fast\nseed: 42\nmodel: tiny\n",
  talking: "# A talking avatar speaks a script (the avatar must be deployed, backend wav2lip)\nkind: render\n"
    + "avatar: ann\nscript: Hello! This video was made from a brief.\n",
  train: "# Train a talking avatar from a video already in the bucket\nkind: train\navatar: ann\n"
    + "video: uploads/ann/ann.mp4\nbackend: wav2lip\nepochs: 2\n",
};

let yaml = null;  // the parser module, loaded once on first use
const loadYaml = () => (yaml ??= import("../vendor/yaml.js"));

// The line a field's key is on: YAML `key:` or JSON `"key":`, each part of the path indented under the last.
export function lineOf(text, path) {
  const lines = text.split("\n");
  let from = 0;
  let indent = -1;
  let found = -1;
  for (const key of path ? path.split(".") : []) {
    const name = key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const pattern = new RegExp(`^(\\s*)(?:"${name}"|${name})\\s*:`);
    found = -1;
    for (let i = from; i < lines.length; i += 1) {
      const match = lines[i].match(pattern);
      if (match && match[1].length > indent) { found = i; indent = match[1].length; from = i + 1; break; }
    }
    if (found < 0) return null;
  }
  return found < 0 ? null : found + 1;
}

export function editorPage() {
  markNav("editor");
  const editor = h("textarea", { id: "brief-text", name: "brief", rows: "10", spellcheck: "false", class: "code",
    autocomplete: "off", "aria-describedby": "brief-help brief-errors" }, STARTERS.prompt);
  const starter = h("select", { id: "starter", name: "starter" },
    h("option", { value: "" }, "keep what is written"),
    h("option", { value: "prompt" }, "a video from a prompt"),
    h("option", { value: "talking" }, "a talking avatar's script"),
    h("option", { value: "train" }, "train an avatar"));
  const name = h("input", { id: "brief-name", name: "name", autocomplete: "off", placeholder: "made from the brief" });
  const errors = h("ul", { id: "brief-errors", class: "error summary", "aria-live": "polite", hidden: true });
  const okNote = h("p", { id: "brief-ok", class: "ok", role: "status", hidden: true }, "The brief is valid.");
  const submit = h("button", { type: "submit" }, "Submit brief");
  const form = h("form", { id: "brief-editor", class: "card", novalidate: true },
    field("starter", "Start from", starter),
    h("label", { for: "brief-text" }, "Brief (YAML or JSON)"),
    h("p", { class: "muted help", id: "brief-help" }, "Fields as in the README's brief reference; checked against the schema the API serves."),
    editor, errors, okNote,
    field("brief-name", "Brief name (optional)", name, "The file name in inbox/; the job id starts with it."),
    submit);
  show("Brief editor", form);

  let schemas = null;
  const showErrors = (list) => {
    const text = editor.value;
    errors.replaceChildren(...list.map((e) => {
      const line = e.line ?? lineOf(text, e.path);
      return h("li", { "data-path": e.path ?? "", "data-line": line ?? "" },
        line ? h("strong", {}, `line ${line}`) : null, line ? " · " : null,
        e.path ? h("code", {}, e.path) : null, e.path ? ": " : null, e.message);
    }));
    errors.hidden = list.length === 0;
    okNote.hidden = list.length !== 0;
    if (list.length) editor.setAttribute("aria-invalid", "true"); else editor.removeAttribute("aria-invalid");
  };
  // Parse and check the text: null and the errors shown, or the brief.
  const check = async () => {
    const { load, YAMLException } = await loadYaml();
    schemas ??= await briefSchemas();
    let document;
    try {
      document = load(editor.value);
    } catch (err) {
      if (!(err instanceof YAMLException)) throw err;
      const mark = err.mark;
      showErrors([{ line: mark ? mark.line + 1 : null, path: "", message: `not valid YAML or JSON: ${err.reason ?? err.message}` }]);
      return null;
    }
    if (document === null || document === undefined) { showErrors([{ path: "", message: "the brief is empty" }]); return null; }
    if (typeof document !== "object" || Array.isArray(document)) {
      showErrors([{ path: "", message: "a brief is a mapping of fields (field: value)" }]);
      return null;
    }
    const kind = document.kind ?? "render";
    if (kind !== "render" && kind !== "train") {
      showErrors([{ path: "kind", message: `is render or train, not ${JSON.stringify(kind)}` }]);
      return null;
    }
    const found = schemaErrors(validatorFor(schemas, kind === "train" ? "TrainBrief" : "RenderBrief"), { ...document, kind });
    showErrors(found);
    return found.length ? null : { ...document, kind };
  };
  let timer = 0;
  editor.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(check, 250); });
  starter.addEventListener("change", () => {
    if (starter.value) { editor.value = STARTERS[starter.value]; check(); }
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const brief = await check();
    if (!brief) { editor.focus(); return; }
    submit.disabled = true;
    const text = editor.value;
    const json = text.trimStart().startsWith("{");
    const stem = name.value.trim() || briefName(brief.prompt ?? brief.script ?? brief.avatar ?? brief.kind, "brief");
    try {
      const job = await api(`/briefs?name=${encodeURIComponent(stem)}`, { method: "POST", body: text,
        type: json ? "application/json" : "application/yaml" });
      location.hash = `#/jobs/${encodeURIComponent(job.job_id)}?play`;
    } catch (err) {
      const fields = serverErrors(err);
      showErrors(fields.length ? fields : [{ path: "", message: `${err.code}: ${err.message}` }]);
      submit.disabled = false;
      editor.focus();
    }
  });
  check().catch((err) => showErrors([{ path: "", message: String(err) }]));
  editor.focus();
  return () => clearTimeout(timer);
}
