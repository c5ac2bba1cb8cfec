// The pages' one way to the REST API, and the formatting they share.
//
// A bearer token, when the service needs one, is taken once from the page's ?token= and kept in
// localStorage (the URL is rewritten without it, so it does not stay in the history or get copied).

const TOKEN_KEY = "nanwatch.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function takeTokenFromUrl() {
  const url = new URL(window.location.href);
  const given = url.searchParams.get("token");
  if (given === null) return;
  if (given) localStorage.setItem(TOKEN_KEY, given);
  else localStorage.removeItem(TOKEN_KEY); // ?token= with nothing forgets it
  url.searchParams.delete("token");
  history.replaceState(null, "", url);
}

takeTokenFromUrl(); // once, as the page loads, before a page script rewrites its URL

function token() {
  return localStorage.getItem(TOKEN_KEY);
}

/** GET (or POST with a JSON body) a path of this service; resolves to the parsed JSON reply. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!reply.ok) throw new ApiError(reply.status, explain(reply.status, await detail(reply)));
  return reply.json();
}

async function detail(reply) {
  try {
    const parsed = await reply.json();
    const text = parsed.detail;
    return Array.isArray(text) ? text.map((d) => d.msg).join("; ") : String(text ?? "");
  } catch {
    return reply.statusText;
  }
}

function explain(status, text) {
  if (status === 401) return `The service asks for a token: open this page with ?token=YOUR_TOKEN once. (${text})`;
  if (status === 403) return `Your token does not allow this. (${text})`;
  if (status === 404) return `Not found, or not visible to your team: ${text}`;
  if (status === 503) return `The service's store is unavailable; the page will retry. (${text})`;
  return `The service answered ${status}: ${text}`;
}

/** A JSON number, or one of "NaN", "Infinity", "-Infinity" (how the API carries non-finite floats). */
export function num(value) {
  if (value === "NaN") return NaN;
  if (value === "Infinity") return Infinity;
  if (value === "-Infinity") return -Infinity;
  return value === null || value === undefined ? null : Number(value);
}

/** A number for people: NaN and ±∞ spelled out, 4 significant digits, exponents when large or small. */
export function fmt(value) {
  const x = num(value);
  if (x === null) return "—";
  if (Number.isNaN(x)) return "NaN";
  if (!Number.isFinite(x)) return x > 0 ? "∞" : "−∞";
  if (Number.isInteger(x) && Math.abs(x) < 1e6) return String(x);
  const size = Math.abs(x);
  return size !== 0 && (size >= 1e5 || size < 1e-3) ? x.toExponential(2) : String(Number(x.toPrecision(4)));
}

/** "12 s ago", "3 min ago", … for a UNIX time in seconds. */
export function ago(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const age = Math.max(0, Date.now() / 1000 - seconds);
  if (age < 60) return `${Math.round(age)} s ago`;
  if (age < 3600) return `${Math.round(age / 60)} min ago`;
  if (age < 86400) return `${Math.round(age / 3600)} h ago`;
  return `${Math.round(age / 86400)} d ago`;
}

/** A new element with attributes and children (strings become text, never HTML). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/** Show an error (or clear it with null) in the page's message line. */
export function showMessage(text) {
  const box = document.getElementById("message");
  box.hidden = !text;
  box.textContent = text || "";
}
