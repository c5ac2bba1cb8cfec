// The run page: status and forecast, the plots over steps, the findings with their fix, the halt.
// Everything comes from the REST API; while the run is running the page asks again every few seconds
// (never more often than three times what the last answer took), for the steps since (history.js).

import { COLORS, lineChart } from "./chart.js";
import { ago, api, el, fmt, num, showMessage } from "./api.js";
import { History } from "./history.js";

const RUN_ID = document.body.dataset.runId;
const BASE = `/v1/runs/${encodeURIComponent(RUN_ID)}`;
const TOP_LAYERS = 5;
const FIELDS = ["loss", "grad_norm", "layers.grad_norm", "layers.act_max_abs", "steps_to_nonfinite"];
const HORIZON = 10;
const POLL_MS = 3000;
let timer = null;

function points() {
  // one bucket per two pixels of a plot: its smallest and largest value make one point per pixel
  const width = document.querySelector(".chart").clientWidth || 800;
  return Math.min(2000, Math.max(100, Math.round(width / 2)));
}

function summary(run) {
  const forecast = num(run.steps_to_nonfinite);
  const items = [
    ["Team", run.team || "—"],
    ["Framework", run.framework || "—"],
    ["Dtype policy", run.dtype_policy || "—"],
    ["Last step", fmt(run.last_step)],
    ["Steps to non-finite", forecast === Infinity ? "none forecast" : fmt(forecast)],
    ["Records", `${fmt(run.records)}${run.dropped ? ` (${fmt(run.dropped)} dropped by the client)` : ""}`],
    ["Halt policy", run.halt_on || "—"],
    ["Last seen", ago(run.last_seen)],
  ];
  document.getElementById("summary").replaceChildren(...items.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  for (const [id, value] of [["status", run.status], ["health", run.health]]) {
    const badge = document.getElementById(id);
    badge.textContent = value;
    badge.className = `badge ${value}`;
  }
}

function haltState(run, requested) {
  const state = document.getElementById("halt-state");
  const halt = run.halt;
  const over = run.status === "halted" || run.status === "finished";
  const by = halt ? `at step ${fmt(halt.acked_step ?? halt.at_step ?? halt.step)} by ${halt.source}: ${halt.reason}` : "";
  const pending = halt && halt.state === "pending";
  if (halt && run.status === "halted") {
    [state.textContent, state.className] = [`Halted ${by}`, "halted"];
  } else if (pending) {
    const who = halt.sent_by ? `${halt.sent_by} (${halt.source})` : halt.source;
    const text = `Halt sent by ${who} (“${halt.reason}”); the job stops at its next batch end from step ${fmt(halt.at_step)}.`;
    [state.textContent, state.className] = [text, "requested"];
  } else if (requested) {
    const text = `Halt requested by ${requested.source} (“${requested.reason}”); the job stops at its next batch end.`;
    [state.textContent, state.className] = [text, "requested"];
  } else if (halt) {
    [state.textContent, state.className] = [`Resumed since it was halted ${by}`, ""];
  } else {
    [state.textContent, state.className] = [over ? `This run is ${run.status}.` : "A halt stops the job at its next batch end.", ""];
  }
  document.getElementById("halt-button").disabled = over || pending || Boolean(requested);
}

function findingMarks(events) {
  return events.map((e) => ({
    step: e.first_step,
    severity: e.severity,
    label: `${e.severity}: ${e.detector}${e.layer ? ` in ${e.layer}` : ""} from step ${e.first_step}`,
  }));
}

function findingsTable(events) {
  const rows = events.map((e) =>
    el(
      "tr",
      { class: `finding-row ${e.severity}`, "data-detector": e.detector },
      el("td", {}, el("span", { class: `badge ${e.severity}` }, e.severity)),
      el("td", {}, e.detector),
      el("td", {}, e.layer || "—"),
      el("td", { class: "num" }, e.first_step === e.last_step ? fmt(e.first_step) : `${fmt(e.first_step)}–${fmt(e.last_step)}`),
      el("td", {}, e.state),
      el("td", { class: "message-cell" }, e.message),
      el("td", { class: "remedy" }, e.remedy),
    ),
  );
  document.querySelector("#findings tbody").replaceChildren(...rows);
  document.getElementById("no-findings").hidden = rows.length > 0;
}

function line(series, label, color) {
  return { label, color, steps: series.steps, values: series.values.map(num), nan: series.nan, inf: series.inf, "-inf": series["-inf"] };
}

function layerLines(layers) {
  return layers.map((layer, i) => line(layer, layer.name, COLORS[i % COLORS.length]));
}

function limitsOf(layers) {
  const seen = new Map();
  for (const layer of layers) seen.set(layer.dtype, layer.limit);
  return [...seen].map(([dtype, value]) => ({ value, label: `${dtype} max ${fmt(value)}` }));
}

function charts(data, events) {
  const s = data.series;
  const domain = [data.first_step ?? 0, data.last_step ?? 0];
  const findings = findingMarks(events);
  const draw = (id, spec) => lineChart(document.getElementById(id), { domain, findings, ...spec });
  draw("chart-loss", { lines: [line(s.loss, "loss", COLORS[0])] });
  draw("chart-grad", { lines: [line(s.grad_norm, "grad norm", COLORS[1])] });
  draw("chart-layers", { lines: layerLines(s["layers.grad_norm"]), empty: "no per-layer gradient norms" });
  const acts = s["layers.act_max_abs"];
  draw("chart-act", { lines: layerLines(acts), limits: limitsOf(acts), log: true, empty: "no max |activation| measured" });
  draw("chart-forecast", {
    lines: [{ ...line(s.steps_to_nonfinite, "steps to non-finite", COLORS[3]), dots: true }],
    limits: [{ value: HORIZON, label: `horizon ${HORIZON} steps: critical below` }],
    log: false,
    empty: "nothing is heading for a non-finite value",
  });
}

let requested = null;

const history = new History(BASE, FIELDS, TOP_LAYERS);

/** Read the run, its findings and its history, and draw them; the run, or null when a read failed. */
async function refresh() {
  try {
    const first = history.data === null; // the first time, the three reads go out together
    const [run, { events }, read] = await Promise.all([api(BASE), api(`${BASE}/events`), first ? history.full(points()) : null]);
    const data = read ?? (await history.update(run.last_step, points()));
    summary(run);
    haltState(run, requested);
    charts(data, events);
    findingsTable(events);
    showMessage(null);
    document.getElementById("live").textContent =
      run.status === "running" ? `live · updated ${new Date().toLocaleTimeString()}` : `${run.status} · not updating`;
    return run;
  } catch (error) {
    showMessage(error.message);
    return null;
  }
}

let loading = false;
let again = false;

/** refresh(), one at a time (two at once would append the same new steps twice), then again in a while
 * while the run is running. */
async function load() {
  if (loading) {
    again = true;
    return;
  }
  loading = true;
  clearTimeout(timer);
  const began = performance.now();
  const run = await refresh();
  loading = false;
  if (!document.body.dataset.ready) document.body.dataset.readyMs = String(Math.round(performance.now()));
  document.body.dataset.ready = "1";
  if (again) {
    again = false;
    load();
  } else if (!run || run.status === "running") {
    timer = setTimeout(load, Math.max(POLL_MS, 3 * (performance.now() - began)));
  }
}

async function halt(event) {
  event.preventDefault();
  const reason = document.getElementById("halt-reason").value.trim() || "stopped from the run page";
  const button = document.getElementById("halt-button");
  button.disabled = true;
  const refused = document.getElementById("halt-error"); // kept apart: the next poll clears the page's message
  try {
    const { command } = await api(`${BASE}/halt`, { method: "POST", body: { reason } });
    requested = command;
    refused.hidden = true;
    load();
  } catch (error) {
    refused.textContent = error.message;
    refused.hidden = false;
    button.disabled = false;
  }
}

document.getElementById("halt-form").addEventListener("submit", halt);
load();
