// Small DOM helpers the pages share: element builder, formatting, status badges, the page frame, event streams.
import { ApiError } from "./api.js";

export const main = document.getElementById("main");
const nav = document.getElementById("nav");

export function h(tag, attrs = {}, ...children) {
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

export const fmtAge = (iso) => {
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
};

export function fmtBytes(n) {
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return i === 0 ? `${n} bytes` : `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

export const pct = (f) => `${Math.round((f ?? 0) * 100)} %`;
export const progressBar = (fraction, label, id) =>
  h("progress", { id, max: "1", value: String(fraction ?? 0), "aria-label": label }, pct(fraction));
export const statusBadge = (status) => h("span", { class: `badge s-${status}` }, status);
export const slug = (text, fallback) =>
  text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || fallback;
// A readable, unique brief name: the job id starts with it, and it never clashes with another brief's name.
export const briefName = (text, fallback) =>
  `${slug(text, fallback)}-${crypto.getRandomValues(new Uint32Array(1))[0].toString(16)}`;

export function fail(error) {
  return h("p", { class: "error", role: "alert" },
    error instanceof ApiError ? `${error.code}: ${error.message}` : String(error));
}

export function show(title, ...content) {
  main.replaceChildren(h("h1", {}, title), ...content);
  document.title = `${title} · videostudio`;
}

export function markNav(name) {
  nav.querySelectorAll("[data-nav]").forEach((a) => {
    if (a.dataset.nav === name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
}

export function showNav(visible) { nav.hidden = !visible; }

// A labelled form field: label, control, optional help and an inline error slot the control points at.
export function field(id, label, control, help) {
  const helpNode = help ? h("p", { class: "muted help", id: `${id}-help` }, help) : null;
  const errorNode = h("p", { class: "error field-error", id: `${id}-error`, hidden: true });
  control.setAttribute("aria-describedby", [helpNode ? `${id}-help` : "", `${id}-error`].join(" ").trim());
  return h("div", { class: "field", "data-field": id }, h("label", { for: id }, label), control, helpNode, errorNode);
}

// Mark `control` invalid with `message` (or clear it with null): aria-invalid and the text under it.
export function markField(control, message) {
  const slot = document.getElementById(`${control.id}-error`);
  if (message) control.setAttribute("aria-invalid", "true"); else control.removeAttribute("aria-invalid");
  if (slot) { slot.textContent = message ?? ""; slot.hidden = !message; }
}

// A server-sent event stream, closed when the page changes.
export function stream(url, event, onData, onEnd) {
  const source = new EventSource(url, { withCredentials: true });
  source.addEventListener(event, (e) => onData(JSON.parse(e.data)));
  source.addEventListener("error", () => { if (onEnd && onEnd(source)) source.close(); });
  return () => source.close();
}
