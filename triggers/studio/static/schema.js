// Briefs checked in the page against the JSON Schema the API serves (/openapi.json): the same schema
// pydantic enforces on the server, so a form marks a bad field before anything is sent. The server's own
// answer (a 422 with `details`) is shown the same way, for the rules a schema cannot say.
import { Validator } from "./vendor/json-schema.js";

let components = null;
export async function briefSchemas() {
  components ??= fetch("/openapi.json", { credentials: "same-origin" }).then((r) => {
    if (!r.ok) throw new Error(`/openapi.json: HTTP ${r.status}`);
    return r.json();
  }).then((doc) => doc.components.schemas).catch((err) => { components = null; throw err; });
  return components;
}

const validators = new Map();
export function validatorFor(schemas, name) {
  if (!validators.has(name)) {
    validators.set(name, new Validator({ $ref: `#/components/schemas/${name}`, components: { schemas } }, "2020-12", false));
  }
  return validators.get(name);
}

// Keywords that only say "something below failed": the leaf errors under them say what.
const STRUCTURAL = new Set(["$ref", "properties", "additionalProperties", "anyOf", "oneOf", "allOf", "items",
  "prefixItems", "if", "then", "else", "dependentSchemas", "unevaluatedProperties", "discriminator"]);

const pathOf = (location) => location.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent).join(".");

function messageFor(error) {
  switch (error.keyword) {
    case "false": return "is not a field of this brief";
    case "pattern": return "has characters that are not allowed here";
    case "exclusiveMinimum": return error.error.replace(/^(.*) is less than (.*)\.$/, "must be more than $2");
    case "required": return error.error.replace(/^Instance does not have required property "(.*)"\.$/, "$1 is required");
    default: return error.error.replace(/^Instance /, "").replace(/\.$/, "");
  }
}

// Field errors of `document` as [{path, message}], one per field: "epochs", "wav2lip.width", "" (the brief).
export function schemaErrors(validator, document) {
  const leaves = validator.validate(document).errors.filter((e) => !STRUCTURAL.has(e.keyword));
  const byPath = new Map();
  for (const e of leaves) {
    const path = e.keyword === "required" ? e.error.match(/"(.*)"/)?.[1] ?? pathOf(e.instanceLocation)
      : pathOf(e.instanceLocation);
    if (!byPath.has(path)) byPath.set(path, []);
    byPath.get(path).push(e);
  }
  const found = [];
  for (const [path, errors] of byPath) {
    // A nullable field's "not null" branch error says nothing when its real branch said why.
    const useful = errors.filter((e) => e.keyword !== "type" || !/"null"/.test(e.error));
    found.push({ path, message: messageFor((useful.length ? useful : errors)[0]) });
  }
  return found;
}

// The server's 422 `details` ({loc, msg, type}) as the same [{path, message}]; a field's error that is the answer's
// own code (background_not_found, invalid_color, …) says that code, as the summary does.
export const serverErrors = (error) => (error?.details ?? []).map((d) => ({ path: (d.loc ?? []).join("."),
  message: d.type && d.type === error.code ? `${d.type}: ${d.msg}` : d.msg }));

// A property's schema without the `anyOf: [X, null]` pydantic writes for an optional field.
export function plainSchema(schemas, property) {
  let schema = property;
  if (schema.$ref) schema = { ...schemas[schema.$ref.split("/").pop()], ...schema };
  if (Array.isArray(schema.anyOf)) {
    const real = schema.anyOf.filter((s) => s.type !== "null");
    if (real.length === 1) schema = { ...schema, ...plainSchema(schemas, real[0]), nullable: true };
  }
  return schema;
}
