// Small SVG line charts for the run page, written for what a diverging run looks like:
// - a logarithmic y axis where the values span decades (a gradient norm going from 1 to 1e30);
// - NaN, +Inf and -Inf drawn as marks of their own (✕ at the top, ▲ at the top, ▼ at the bottom, with a
//   dashed line down the plot), never as a gap in the line that would hide them;
// - findings as vertical lines coloured by severity; a dtype's largest value as a dashed limit line.

import { el, fmt } from "./api.js";

const NS = "http://www.w3.org/2000/svg";
const HEIGHT = 230;
const MARGIN = { top: 22, right: 16, bottom: 26, left: 64 };
const DECADES_FOR_LOG = 3;
export const COLORS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#65a30d"];
const SEVERITY_COLORS = { info: "#64748b", warning: "#d97706", critical: "#dc2626" };

function node(tag, attributes = {}, text) {
  const element = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function titled(element, text) {
  element.append(node("title", {}, text));
  return element;
}

/** Round numbers between lo and hi, about `count` of them. */
function niceTicks(lo, hi, count) {
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function yScale(values, limits, log) {
  const all = values.concat(limits);
  const positive = all.filter((v) => v > 0);
  const useLog =
    log === true ||
    (log === "auto" && positive.length > 0 && !all.some((v) => v < 0) &&
      Math.log10(Math.max(...positive) / Math.min(...positive)) >= DECADES_FOR_LOG);
  if (useLog) {
    const lo = Math.floor(Math.log10(Math.min(...positive)));
    const hi = Math.max(lo + 1, Math.ceil(Math.log10(Math.max(...positive))));
    const every = Math.ceil((hi - lo) / 6);
    const ticks = [];
    for (let k = lo; k <= hi; k += every) ticks.push(10 ** k);
    return { log: true, lo, hi, ticks, at: (v) => (v > 0 ? (Math.log10(v) - lo) / (hi - lo) : 0) };
  }
  let lo = Math.min(...all);
  let hi = Math.max(...all);
  if (!all.length) [lo, hi] = [0, 1];
  if (lo === hi) [lo, hi] = [lo - (Math.abs(lo) || 1) * 0.1, hi + (Math.abs(hi) || 1) * 0.1];
  const pad = (hi - lo) * 0.05;
  [lo, hi] = [lo - pad, hi + pad];
  return { log: false, lo, hi, ticks: niceTicks(lo, hi, 5), at: (v) => (v - lo) / (hi - lo) };
}

function markShape(kind, x, y) {
  if (kind === "nan") return `M${x - 4},${y - 4}L${x + 4},${y + 4}M${x - 4},${y + 4}L${x + 4},${y - 4}`;
  if (kind === "inf") return `M${x},${y - 5}L${x + 5},${y + 4}L${x - 5},${y + 4}Z`;
  return `M${x},${y + 5}L${x + 5},${y - 4}L${x - 5},${y - 4}Z`;
}

const MARK_NAMES = { nan: "NaN", inf: "+Inf", "-inf": "-Inf" };

/**
 * Draw a chart into the figure `host`, replacing the one before.
 * spec: { lines: [{label, color, steps, values, nan, inf, "-inf", dots}], domain: [firstStep, lastStep],
 *         log: "auto" | true | false, limits: [{value, label}], findings: [{step, severity, label}],
 *         empty: text shown when there is nothing to draw }
 */
export function lineChart(host, spec) {
  const width = Math.max(320, Math.round(host.clientWidth || 640));
  const box = { x0: MARGIN.left, x1: width - MARGIN.right, y0: MARGIN.top, y1: HEIGHT - MARGIN.bottom };
  const label = host.querySelector("figcaption")?.textContent || "chart";
  const root = node("svg", { viewBox: `0 0 ${width} ${HEIGHT}`, width, height: HEIGHT, role: "img", "aria-label": label });
  const lines = spec.lines || [];
  const values = lines.flatMap((line) => line.values);
  const marks = lines.reduce((n, line) => n + line.nan.length + line.inf.length + line["-inf"].length, 0);
  root.dataset.points = String(values.length);
  root.dataset.marks = String(marks);
  host.querySelectorAll("svg, .chart-legend").forEach((old) => old.remove());
  host.append(root);
  if (!values.length && !marks) {
    root.append(node("text", { x: width / 2, y: HEIGHT / 2, class: "empty", "text-anchor": "middle" }, spec.empty || "no data yet"));
    return;
  }
  const limits = (spec.limits || []).map((l) => l.value);
  const y = yScale(values, limits, spec.log ?? "auto");
  root.dataset.scale = y.log ? "log" : "linear";
  const [lo, hi] = spec.domain[0] === spec.domain[1] ? [spec.domain[0], spec.domain[0] + 1] : spec.domain;
  const [first, last] = [lo - (hi - lo) * 0.01, hi + (hi - lo) * 0.01]; // room for a mark at either end
  const px = (step) => box.x0 + ((step - first) / (last - first)) * (box.x1 - box.x0);
  const py = (v) => box.y1 - Math.min(1, Math.max(0, y.at(v))) * (box.y1 - box.y0);
  drawAxes(root, box, y, py, niceTicks(lo, hi, 6).filter((t) => Number.isInteger(t)), px);
  for (const limit of spec.limits || []) drawLimit(root, box, py(limit.value), limit.label);
  for (const finding of spec.findings || []) drawFinding(root, box, px(finding.step), finding);
  lines.forEach((line) => drawLine(root, line, px, py));
  lines.forEach((line) => drawMarks(root, box, line, px));
  host.append(legend(lines, y.log));
}

function drawAxes(root, box, y, py, xTicks, px) {
  root.append(node("rect", { x: box.x0, y: box.y0, width: box.x1 - box.x0, height: box.y1 - box.y0, class: "plot" }));
  for (const tick of y.ticks) {
    const at = py(tick);
    root.append(node("line", { x1: box.x0, x2: box.x1, y1: at, y2: at, class: "grid" }));
    const label = y.log ? (Math.abs(Math.log10(tick)) >= 4 ? `1e${Math.round(Math.log10(tick))}` : fmt(tick)) : fmt(tick);
    root.append(node("text", { x: box.x0 - 6, y: at + 4, class: "tick", "text-anchor": "end" }, label));
  }
  for (const tick of xTicks) {
    const at = px(tick);
    root.append(node("line", { x1: at, x2: at, y1: box.y1, y2: box.y1 + 4, class: "axis" }));
    root.append(node("text", { x: at, y: box.y1 + 17, class: "tick", "text-anchor": "middle" }, fmt(tick)));
  }
}

function drawLimit(root, box, at, label) {
  root.append(node("line", { x1: box.x0, x2: box.x1, y1: at, y2: at, class: "limit" }));
  root.append(node("text", { x: box.x0 + 4, y: at - 4, class: "limit-label" }, label));
}

function drawFinding(root, box, at, finding) {
  const color = SEVERITY_COLORS[finding.severity] || SEVERITY_COLORS.info;
  const line = node("line", { x1: at, x2: at, y1: box.y0, y2: box.y1, stroke: color, class: "finding" });
  root.append(titled(line, finding.label));
}

function drawLine(root, line, px, py) {
  if (line.dots) {
    // a series that is only defined at some steps (a forecast): points, never a line across the gaps
    line.steps.forEach((step, i) => root.append(node("circle", { cx: px(step), cy: py(line.values[i]), r: 2, fill: line.color, class: "dot" })));
    return;
  }
  if (!line.values.length) return;
  let d = "";
  for (let i = 0; i < line.steps.length; i += 1) d += `${i ? "L" : "M"}${px(line.steps[i]).toFixed(1)},${py(line.values[i]).toFixed(1)}`;
  root.append(titled(node("path", { d, stroke: line.color, class: "line" }), line.label));
  if (line.values.length === 1) {
    root.append(node("circle", { cx: px(line.steps[0]), cy: py(line.values[0]), r: 2.5, fill: line.color }));
  }
}

function drawMarks(root, box, line, px) {
  for (const kind of ["nan", "inf", "-inf"]) {
    const at = kind === "-inf" ? box.y1 - 7 : box.y0 - 9;
    for (const step of line[kind]) {
      const x = px(step);
      root.append(node("line", { x1: x, x2: x, y1: box.y0, y2: box.y1, class: "mark-rule" }));
      const shape = node("path", { d: markShape(kind, x, at), stroke: line.color, fill: line.color, class: `mark mark-${kind}` });
      root.append(titled(shape, `${MARK_NAMES[kind]} in ${line.label} at step ${step}`));
    }
  }
}

function legend(lines, log) {
  const items = lines.map((line) => el("span", { class: "item" }, el("span", { class: "swatch", "data-color": line.color }), line.label));
  const scale = el("span", { class: "muted" }, log ? "log scale" : "linear scale");
  const box = el("div", { class: "chart-legend" }, ...items, scale);
  // colours through the CSSOM: the page's CSP allows no inline style attributes
  box.querySelectorAll(".swatch").forEach((swatch) => { swatch.style.background = swatch.dataset.color; });
  return box;
}
