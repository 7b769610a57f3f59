// slipstream inspector: what every view shares: building DOM (text only, never HTML), the data
// source (the local server, or the JSON embedded in an --html export), the URL state, the
// tooltip, and the table filters (the same rules as inspector/query.py).
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

// Model text as shown: control characters (other than newline and tab) and bidi overrides, which
// would act invisibly (or reorder what follows), become visible escapes like \x1b or \u202e.
const INVISIBLE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
function visible(text) {
  return String(text ?? "").replace(INVISIBLE, (c) => {
    const code = c.charCodeAt(0);
    const hex = code.toString(16);
    return code < 0x100 ? `\\x${hex.padStart(2, "0")}` : `\\u${hex.padStart(4, "0")}`;
  });
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

  // The server's errors are JSON with a readable `error` (a step file rewritten after it was
  // indexed, say); that message is what the page shows.
  function errorOf(text) {
    try { return JSON.parse(text).error || null; } catch (e) { return null; }
  }

  async function get(path) {
    const response = await fetch(path, {cache: "no-store", credentials: "same-origin"});
    if (response.status === 404) return null;
    const text = await response.text();
    if (!response.ok) throw new Error(errorOf(text) || `${path}: HTTP ${response.status}`);
    return text.includes('"$float"') ? JSON.parse(text, revive) : JSON.parse(text);
  }
  const q = encodeURIComponent;

  // /api/index is JSON Lines straight from DIR/rollouts/index.jsonl, the lines that passed the
  // server's checks; one that does not parse is still skipped, never fatal. The generation
  // changes when the index was rewritten (a resumed run rewinds it): the page then reloads.
  async function getLines(path) {
    const response = await fetch(path, {cache: "no-store", credentials: "same-origin"});
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    const generation = Number(response.headers.get("X-Slipstream-Generation") || 0);
    const text = await response.text();
    const withFloats = text.includes('"$float"');
    const rows = [];
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      try { rows.push(withFloats ? JSON.parse(line, revive) : JSON.parse(line)); } catch (e) { /* skipped */ }
    }
    return {rows, generation};
  }

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
    index: async (from) => embedded ? {rows: embedded.rows.slice(from)} : getLines(`api/index?from=${from}`),
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

// "v3", or "v2–v3" for a sample that spans versions.
function versionSpan(low, high) { return low === high ? `v${low}` : `v${low}–v${high}`; }

// <option>s for a <select>, `chosen` selected; `pairs` are [value, label].
function options(pairs, chosen) {
  return pairs.map(([value, text]) =>
    h("option", {value, text, ...(String(chosen ?? "") === value ? {selected: ""} : {})}));
}

function headerRow(labels) { return h("tr", {}, ...labels.map((text) => h("th", {text}))); }

// A collapsed block of model text.
function textBlock(summary, text) {
  return h("details", {}, h("summary", {text: summary}), h("pre", {class: "text", text: visible(text)}));
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

// Table filters and sorting: the rules of inspector/query.py. A NaN counts as missing: it
// matches no range and sorts last (it compares false with everything).
function absent(value) { return value === null || value === undefined || Number.isNaN(value); }

const SORT_KEYS = ["step", "id", "len", "reward", "advantage", "staleness", "max_gap", "k3",
                   "max_iw", "masked", "versions", "finish", "det_nonzero"];
const RANGES = {step: "step", reward: "reward", stale: "staleness", gap: "max_gap"};

// The filter of `params` as one predicate, built once per render (25,000 rows are tested).
function compileFilter(params) {
  const ranges = [];
  for (const [name, key] of Object.entries(RANGES)) {
    const low = params[`${name}_min`], high = params[`${name}_max`];
    const lo = low === undefined || low === "" ? null : Number(low);
    const hi = high === undefined || high === "" ? null : Number(high);
    if (lo !== null || hi !== null) ranges.push([key, lo, hi]);
  }
  const mask = params.mask || "", finish = params.finish || "";
  const needle = (params.text || "").toLowerCase();
  return (row) => {
    for (const [key, lo, hi] of ranges) {
      const value = row[key];
      if (absent(value)) return false;
      if ((lo !== null && value < lo) || (hi !== null && value > hi)) return false;
    }
    if (mask) {
      const reasons = row.reasons || {};
      const any = Object.keys(reasons).length > 0;
      if (mask === "none" ? any : !reasons[mask]) return false;
    }
    if (finish && row.finish !== finish) return false;
    if (needle && ![row.id, row.prompt, row.text].some((s) => String(s ?? "").toLowerCase().includes(needle))) {
      return false;
    }
    return true;
  };
}

function matches(row, params) { return compileFilter(params)(row); }

function compare(a, b) {
  if (a < b) return -1;
  if (a > b) return 1;
  return 0;
}

// A stable sort on the key (ties keep the index's order), missing values last either way.
function sortRows(rows, key, desc) {
  const present = rows.filter((r) => !absent(r[key]));
  const missing = rows.filter((r) => absent(r[key]));
  present.sort((a, b) => desc ? compare(b[key], a[key]) : compare(a[key], b[key]));
  return present.concat(missing);
}
