// slipstream inspector: what every view shares: building DOM (text only, never HTML), the data
// source (the local server, or the JSON embedded in an --html export), the URL state, the
// tooltip, and the table filters (the same rules as buffer/inspector/query.py).
"use strict";

// h("td", {class: "num", text: value}, child, ...): an element whose text is set with
// textContent and whose children are nodes or strings (made text nodes). Never innerHTML.
function h(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

// Numbers for tables: short, but 0 stays "0" so an exact match reads as one. Tooltips and
// detail panels use String(value): JavaScript's shortest round-trip form, the value written.
function short(value) {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value !== "number") return String(value);
  if (value === 0 || !Number.isFinite(value)) return String(value);
  const magnitude = Math.abs(value);
  if (Number.isInteger(value) && magnitude < 1e6) return String(value);
  if (magnitude < 1e-3 || magnitude >= 1e6) return value.toExponential(2);
  return String(Number(value.toPrecision(4)));
}

// A JSON reviver for non-finite floats, which the server spells {"$float": "NaN"} (JSON has no
// NaN); model text is always a string, so it can never be taken for one.
function revive(key, value) {
  if (value && typeof value === "object" && !Array.isArray(value) &&
      typeof value.$float === "string" && Object.keys(value).length === 1) {
    return Number(value.$float);
  }
  return value;
}

const Source = (() => {
  const node = document.getElementById("slipstream-data");
  const embedded = node ? JSON.parse(node.textContent, revive) : null;

  async function get(path) {
    const response = await fetch(path, {cache: "no-store", credentials: "same-origin"});
    if (response.status === 404) return null;
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return JSON.parse(await response.text(), revive);
  }
  const q = encodeURIComponent;

  function embeddedBuffer(name) {
    const b = embedded.buffer;
    const chosen = b.snapshots.includes(name) ? name : b.snapshots[b.snapshots.length - 1];
    return {snapshots: b.snapshots, snapshot: chosen || null,
            rows: chosen ? b.rows[chosen] : [], evictions: b.evictions,
            eviction_counts: b.eviction_counts};
  }

  return {
    live: !embedded,
    run: async () => embedded ? embedded.run : get("api/run"),
    index: async (from) => embedded ? {rows: embedded.rows.slice(from)} : get(`api/index?from=${from}`),
    metrics: async (from) => embedded ? {rows: embedded.metrics.slice(from)}
                                      : get(`api/metrics?from=${from}`),
    sample: async (id, step) => embedded ? embedded.samples[`${id}@${step}`] || null
                                         : get(`api/sample?id=${q(id)}&step=${q(step)}`),
    buffer: async (name) => embedded ? embeddedBuffer(name) : get(`api/buffer?snapshot=${q(name || "")}`),
  };
})();

// The whole view state lives in the URL fragment (#view=samples&sort=max_gap&desc=1), so a view
// can be shared, reloaded and opened from file:// alike.
function readHash() {
  return Object.fromEntries(new URLSearchParams(location.hash.slice(1)));
}

function navigate(params) {
  const p = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== "" && value !== null && value !== undefined) p.set(key, String(value));
  }
  const hash = "#" + p.toString();
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = hash;
}

function link(text, params, extra) {
  const p = new URLSearchParams(params);
  return h("a", {href: "#" + p.toString(), text, ...(extra || {})});
}

const Tooltip = (() => {
  let box = null;
  function show(event, rows) {
    box = box || document.getElementById("tooltip");
    const lines = rows.map(([label, value]) =>
      h("div", {class: "tip-row"}, h("span", {class: "tip-label", text: label}),
        h("span", {class: "tip-value", text: value})));
    box.replaceChildren(...lines);
    box.hidden = false;
    const x = Math.min(event.clientX + 14, window.innerWidth - box.offsetWidth - 8);
    const y = Math.min(event.clientY + 14, window.innerHeight - box.offsetHeight - 8);
    box.style.left = `${Math.max(4, x)}px`;
    box.style.top = `${Math.max(4, y)}px`;
  }
  function hide() { if (box) box.hidden = true; }
  return {show, hide};
})();

// Table filters and sorting: the rules of buffer/inspector/query.py.
const SORT_KEYS = ["step", "id", "len", "reward", "advantage", "staleness", "max_gap", "k3",
                   "max_iw", "masked", "versions", "finish"];
const RANGES = {step: "step", reward: "reward", stale: "staleness", gap: "max_gap"};

function matches(row, params) {
  for (const [name, key] of Object.entries(RANGES)) {
    const low = params[`${name}_min`], high = params[`${name}_max`];
    if ((low === undefined || low === "") && (high === undefined || high === "")) continue;
    const value = row[key];
    if (value === null || value === undefined) return false;
    if (low !== undefined && low !== "" && value < Number(low)) return false;
    if (high !== undefined && high !== "" && value > Number(high)) return false;
  }
  const reasons = row.reasons || {};
  const mask = params.mask || "";
  if (mask === "none" && Object.keys(reasons).length) return false;
  if (mask !== "" && mask !== "none" && !reasons[mask]) return false;
  if (params.finish && row.finish !== params.finish) return false;
  if (params.text) {
    const needle = params.text.toLowerCase();
    if (![row.id, row.prompt, row.text].some((s) => String(s ?? "").toLowerCase().includes(needle))) {
      return false;
    }
  }
  return true;
}

function compare(a, b) {
  if (a < b) return -1;
  if (a > b) return 1;
  return 0;
}

// Step then id order first; then a stable sort on the key, missing values last either way.
function sortRows(rows, key, desc) {
  const sorted = rows.slice().sort((a, b) => compare(a.step, b.step) || compare(String(a.id), String(b.id)));
  const present = sorted.filter((r) => r[key] !== null && r[key] !== undefined);
  const missing = sorted.filter((r) => r[key] === null || r[key] === undefined);
  present.sort((a, b) => desc ? compare(b[key], a[key]) : compare(a[key], b[key]));
  return present.concat(missing);
}
