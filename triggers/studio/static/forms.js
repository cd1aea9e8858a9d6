// Forms that build a brief: each control is bound to a brief field (a dotted path), the brief is checked
// against the API's JSON Schema as the user types, and every error, the page's or the server's, is marked
// on its field (aria-invalid plus the text under it); errors no control owns go in the form's summary.
import { fmtBytes, h, markField } from "./dom.js";
import { plainSchema, schemaErrors, serverErrors, validatorFor } from "./schema.js";

const humanise = (name) => name.replaceAll("_", " ").replace(/^./, (c) => c.toUpperCase());

export class BriefForm {
  constructor(schemas, schemaName, summary) {
    this.schemas = schemas;
    this.validator = validatorFor(schemas, schemaName);
    this.summary = summary;  // an element (role=alert) for errors no field owns
    this.controls = [];  // {path, control, type}: a path may have one control per part of a form (the hidden are skipped)
    this.touched = new Set();  // paths the user has changed: only their errors show while typing
    this.shapes = [];  // {path, schemaOf}: fields checked against the schema of the shape chosen (see shape())
  }

  bind(path, control, type = "text") {
    this.controls.push({ path, control, type });
    const touch = () => { this.touched.add(path); this.check(); };
    control.addEventListener("input", touch);
    control.addEventListener("change", touch);
    return control;
  }

  visible() { return this.controls.filter(({ control }) => !control.disabled && !control.closest("[hidden]")); }

  // The brief the controls say: only fields the user set, typed as the schema wants them.
  document(base = {}) {
    const doc = structuredClone(base);
    for (const { path, control, type } of this.visible()) {
      let value = type === "checkbox" ? control.checked : control.value;
      if (type !== "checkbox" && value === "") continue;
      if (type === "number") value = Number(value);
      if (type === "boolean") value = value === "true";
      const parts = path.split(".");
      let target = doc;
      for (const part of parts.slice(0, -1)) target = target[part] ??= {};
      target[parts.at(-1)] = value;
    }
    return doc;
  }

  // The fields the page adds itself (kind, the upload's key), part of every check.
  base(fields) { this.fixed = fields; return this; }

  // A field that is one of several shapes (a oneOf, like `background`): `schemaOf(value)` names the component
  // schema of the shape it has now, and that part is checked against it alone, so its errors are that shape's own
  // (not every other shape's "required" and "not a field").
  shape(path, schemaOf) { this.shapes.push({ path, schemaOf }); return this; }

  // Field errors of `doc` as [{path, message}].
  errors(doc) {
    const whole = structuredClone(doc);
    const found = [];
    for (const { path, schemaOf } of this.shapes) {
      const parts = path.split(".");
      const parent = parts.slice(0, -1).reduce((o, p) => o?.[p], whole);
      const value = parent?.[parts.at(-1)];
      const name = value === undefined ? null : schemaOf(value);
      if (!name) continue;
      delete parent[parts.at(-1)];
      found.push(...schemaErrors(validatorFor(this.schemas, name), value)
        .map((e) => ({ ...e, path: e.path ? `${path}.${e.path}` : path })));
    }
    return [...schemaErrors(this.validator, whole), ...found];
  }

  // Check the brief against the schema and mark what is wrong (`all`: on submit, every field and the summary;
  // else the fields the user touched); true when nothing is wrong.
  check({ all = false } = {}) {
    const errors = this.errors(this.document(this.fixed ?? {}));
    this.mark(all ? errors : errors.filter((e) => this.touched.has(e.path)), { summary: all });
    return errors.length === 0;
  }

  mark(errors, { summary = true } = {}) {
    const byPath = new Map(errors.map((e) => [e.path, e.message]));
    const shown = this.visible();
    for (const c of this.controls) markField(c.control, shown.includes(c) ? byPath.get(c.path) ?? null : null);
    const owned = new Set(shown.map((c) => c.path));
    const loose = errors.filter((e) => !owned.has(e.path));
    if (summary) {
      this.summary.replaceChildren(...loose.map((e) => h("li", {}, e.path ? `${e.path}: ${e.message}` : e.message)));
      this.summary.hidden = loose.length === 0;
    }
  }

  // A server refusal: its field errors on their fields, its message in the summary if no field took it.
  showServer(error) {
    const errors = serverErrors(error);
    if (!errors.length) errors.push({ path: "", message: `${error.code}: ${error.message}` });
    this.mark(errors);
    this.focusFirstInvalid();
  }

  focusFirstInvalid() {
    for (const { control } of this.visible()) {
      if (control.getAttribute("aria-invalid") === "true") { control.focus(); return; }
    }
    this.summary.focus?.();
  }
}

// An input for one schema property: number inputs with its bounds, a select for an enum or a boolean, else text.
// Empty means "the default", which the placeholder or first option names.
export function controlFor(schemas, id, property) {
  const schema = plainSchema(schemas, property);
  const dflt = schema.default;
  if (schema.enum || schema.type === "boolean") {
    const values = schema.enum ?? [true, false];
    const name = (v) => (v === true ? "yes" : v === false ? "no" : String(v));
    return { type: schema.type === "boolean" ? "boolean" : "text", control: h("select", { id, name: id },
      h("option", { value: "" }, dflt === undefined || dflt === null ? "default" : `default (${name(dflt)})`),
      values.map((v) => h("option", { value: String(v) }, name(v)))) };
  }
  if (schema.type === "integer" || schema.type === "number") {
    const step = schema.type === "integer" ? (schema.multipleOf ?? 1) : "any";
    return { type: "number", control: h("input", { id, name: id, type: "number", inputmode: "decimal", step: String(step),
      min: schema.minimum, max: schema.maximum, placeholder: dflt === undefined || dflt === null ? "" : `default ${dflt}` }) };
  }
  return { type: "text", control: h("input", { id, name: id, type: "text", autocomplete: "off",
    placeholder: dflt === undefined || dflt === null ? "" : `default ${dflt}` }) };
}

export const labelFor = (schemas, name, property) => plainSchema(schemas, property).title ?? humanise(name);
export const helpFor = (schemas, property) => plainSchema(schemas, property).description;

// An upload field's check before anything is sent: a file chosen, within the server's limit, of a type it takes.
// Marks the field and returns whether it passed.
export function checkUpload(input, { suffixes, limit, missing }) {
  const file = input.files[0];
  let message = null;
  if (!file) message = missing;
  else if (file.size > limit) {
    message = `${file.name} is ${fmtBytes(file.size)}: this server takes uploads of at most ${fmtBytes(limit)}`;
  } else if (!suffixes.some((s) => file.name.toLowerCase().endsWith(s))) {
    message = `${file.name} is not one of ${suffixes.join(", ")}`;
  }
  markField(input, message);
  return message === null;
}
