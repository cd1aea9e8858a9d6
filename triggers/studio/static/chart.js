// A loss chart drawn as inline SVG from a train stage's metrics.
const SVG = "http://www.w3.org/2000/svg";
// Ten colours with at least 3:1 contrast on white; validation curves are dashed, so a pair reads as a pair.
const COLOURS = ["#1f5fa8", "#b3261e", "#2e7d32", "#7b3fa0", "#8a5a00", "#00687a", "#c2185b", "#5d4037", "#3949ab",
  "#558b2f"];

const numeric = (list) => Array.isArray(list) && list.some((v) => typeof v === "number");

// Series from mochi-lora's train_loss/val_loss lists and wav2lip's <phase>_history dicts of lists.
export function lossSeries(metrics = {}) {
  const series = [];
  for (const [key, value] of Object.entries(metrics)) {
    if (/loss/.test(key) && numeric(value)) series.push({ name: key.replaceAll("_", " "), values: value });
    if (key.endsWith("_history") && value && typeof value === "object" && !Array.isArray(value)) {
      const phase = key.slice(0, -"_history".length);
      for (const [name, values] of Object.entries(value)) {
        if (numeric(values)) series.push({ name: `${phase} ${name.replaceAll("_", " ")}`, values });
      }
    }
  }
  return series;
}

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// `hidden`: names of series the user switched off in the legend (kept by the caller across redraws, as the
// chart is drawn again each time the manifest changes); the scale fits the series still shown.
export function lossChart(series, { width = 640, height = 260, hidden = new Set(), onToggle = () => {} } = {}) {
  const pad = { left: 56, right: 12, top: 12, bottom: 32 };
  const all = series;
  series = series.filter((s) => !hidden.has(s.name));
  const points = series.flatMap((s) => s.values.filter((v) => typeof v === "number"));
  if (!points.length) points.push(0, 1);
  const maxLen = Math.max(...series.map((s) => s.values.length), 1);
  let lo = Math.min(...points), hi = Math.max(...points);
  if (lo === hi) { lo -= 0.5; hi += 0.5; }
  const x = (i) => pad.left + (maxLen === 1 ? 0.5 : i / (maxLen - 1)) * (width - pad.left - pad.right);
  const y = (v) => pad.top + (1 - (v - lo) / (hi - lo)) * (height - pad.top - pad.bottom);
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart",
    "aria-label": `Training curves per epoch: ${series.map((s) => s.name).join(", ")}` });
  svg.append(el("title", {}, "Training curves per epoch"));
  for (const t of [lo, (lo + hi) / 2, hi]) {
    svg.append(el("line", { x1: pad.left, x2: width - pad.right, y1: y(t), y2: y(t), class: "grid" }));
    svg.append(el("text", { x: pad.left - 6, y: y(t) + 4, "text-anchor": "end", class: "tick" }, t.toPrecision(3)));
  }
  svg.append(el("text", { x: (width + pad.left) / 2, y: height - 8, "text-anchor": "middle", class: "tick" }, "epoch"));
  const colourOf = (s) => COLOURS[all.indexOf(s) % COLOURS.length];  // a series keeps its colour when others hide
  series.forEach((s) => {
    const colour = colourOf(s);
    const pts = s.values.map((v, i) => [i, v]).filter(([, v]) => typeof v === "number");
    if (pts.length > 1) {
      svg.append(el("polyline", { points: pts.map(([i, v]) => `${x(i)},${y(v)}`).join(" "), fill: "none",
        stroke: colour, "stroke-width": 2, "stroke-dasharray": /\bval\b/.test(s.name) ? "6 4" : "none" }));
    }
    for (const [i, v] of pts) {
      const dot = el("circle", { cx: x(i), cy: y(v), r: 4, fill: colour, class: "point", "data-series": s.name });
      dot.append(el("title", {}, `${s.name}, epoch ${i + 1}: ${v}`));
      svg.append(dot);
    }
  });
  const legend = document.createElement("ul");
  legend.className = "legend";
  all.forEach((s) => {
    const item = document.createElement("li");
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "series-toggle";
    toggle.dataset.series = s.name;
    toggle.setAttribute("aria-pressed", String(!hidden.has(s.name)));
    toggle.title = hidden.has(s.name) ? `Show ${s.name}` : `Hide ${s.name}`;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colourOf(s);
    toggle.append(swatch, s.name);
    toggle.addEventListener("click", () => {
      if (hidden.has(s.name)) hidden.delete(s.name); else hidden.add(s.name);
      onToggle(s.name);
    });
    item.append(toggle);
    legend.append(item);
  });
  const figure = document.createElement("figure");
  figure.className = "loss";
  figure.append(svg, legend);
  return figure;
}
