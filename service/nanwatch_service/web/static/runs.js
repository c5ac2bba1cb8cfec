// The runs page: every run the caller may see, filtered, most recently active first, refreshed every 5 s.

import { ago, api, el, fmt, num, showMessage } from "./api.js";

const REFRESH_MS = 5000;
const form = document.getElementById("filters");
let timer = null;
let generation = 0;

function filters() {
  const data = new FormData(form);
  return { status: data.get("status"), health: data.get("health"), team: data.get("team").trim() };
}

function restoreFilters() {
  const query = new URLSearchParams(window.location.search);
  for (const name of ["status", "health", "team"]) {
    if (query.has(name)) form.elements[name].value = query.get(name);
  }
}

function keepFiltersInUrl({ status, health, team }) {
  const query = new URLSearchParams();
  if (status) query.set("status", status);
  if (health) query.set("health", health);
  if (team) query.set("team", team);
  const search = query.toString();
  history.replaceState(null, "", search ? `?${search}` : window.location.pathname);
}

function row(run) {
  const forecast = num(run.steps_to_nonfinite);
  const link = el("a", { href: `/runs/${encodeURIComponent(run.run_id)}` }, run.run_id);
  return el(
    "tr",
    { "data-run-id": run.run_id },
    el("td", {}, link, run.name && run.name !== run.run_id ? el("span", { class: "muted" }, ` ${run.name}`) : null),
    el("td", {}, el("span", { class: `badge ${run.status}` }, run.status)),
    el("td", {}, el("span", { class: `badge ${run.health}` }, run.health)),
    el("td", { class: "num" }, fmt(run.last_step)),
    el("td", { class: forecast !== null && Number.isFinite(forecast) ? "num soon" : "num" }, fmt(forecast)),
    el("td", {}, run.team || "—"),
    el("td", { title: new Date(run.last_seen * 1000).toISOString() }, ago(run.last_seen)),
  );
}

async function refresh() {
  clearTimeout(timer);
  const chosen = filters();
  keepFiltersInUrl(chosen);
  const query = new URLSearchParams({ limit: "1000" });
  if (chosen.status) query.set("status", chosen.status);
  if (chosen.team) query.set("team", chosen.team);
  const mine = ++generation; // an answer to filters changed since is dropped
  try {
    const { runs } = await api(`/v1/runs?${query}`);
    if (mine !== generation) return;
    const shown = runs.filter((run) => !chosen.health || run.health === chosen.health);
    document.querySelector("#runs tbody").replaceChildren(...shown.map(row));
    document.getElementById("empty").hidden = shown.length > 0;
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    showMessage(null);
  } catch (error) {
    showMessage(error.message);
  }
  document.body.dataset.ready = "1";
  timer = setTimeout(refresh, REFRESH_MS);
}

restoreFilters();
form.addEventListener("change", refresh);
form.addEventListener("submit", (event) => {
  event.preventDefault();
  refresh();
});
refresh();
