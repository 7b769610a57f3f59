// slipstream inspector: the page's state, its router, the run overview and the samples table,
// and live following (new index rows and metrics every 2 s while the server is the source).
"use strict";

const state = {run: null, rows: [], metrics: [], finishes: new Set(), reasons: new Set(),
               updatedAt: null, generation: 0};
const VIEWS = ["overview", "samples", "sample", "group", "buffer"];
const CURVES = ["reward/mean", "kl/ref", "mismatch/kl", "mismatch/max_abs_logprob_diff",
                "mismatch/tokens", "staleness/kl", "staleness/mean", "staleness/max",
                "rollout/weight_version", "timing/weight_sync_s", "timing/step_s",
                "throughput/rollout_tokens_per_s", "throughput/train_tokens_per_s", "loss/total",
                "entropy/mean", "optim/grad_norm", "optim/lr"];
const COLUMNS = [["step", "step"], ["id", "sample"], ["group", "group"], ["len", "tokens"],
                 ["reward", "reward"], ["advantage", "adv."], ["staleness", "stale"],
                 ["versions", "versions"], ["max_gap", "max |gap|"], ["k3", "k3"],
                 ["max_iw", "max iw"], ["masked", "masked"], ["finish", "finish"],
                 ["text", "completion"]];

function addRows(rows) {
  for (const row of rows) {
    state.rows.push(row);
    if (row.finish) state.finishes.add(row.finish);
    for (const reason of Object.keys(row.reasons || {})) state.reasons.add(reason);
  }
}

// ---- overview ---------------------------------------------------------------------------
function metricKeys() {
  const present = new Set();
  for (const row of state.metrics) {
    for (const [key, value] of Object.entries(row)) {
      if (key !== "step" && typeof value === "number") present.add(key);
    }
  }
  const others = [...present].filter((k) => !CURVES.includes(k)).sort();
  return CURVES.filter((k) => present.has(k)).concat(others);
}

function renderOverview(section) {
  const steps = new Set(state.rows.map((r) => r.step));
  const cards = [["samples", state.rows.length], ["steps with samples", steps.size],
                 ["metric rows", state.metrics.length],
                 ["max_lag", state.run.max_lag ?? "—"],
                 ["deterministic", state.run.deterministic ? "yes" : "no"]];
  const summary = h("div", {class: "cards"},
    ...cards.map(([label, value]) => h("div", {class: "card"}, h("div", {class: "card-value", text: value}),
                                       h("div", {class: "card-label", text: label}))));
  const pick = (step) => navigate({view: "samples", step_min: step, step_max: step});
  const grid = h("div", {class: "charts"});
  for (const key of metricKeys()) {
    const points = state.metrics.filter((m) => typeof m[key] === "number").map((m) => [m.step, m[key]]);
    points.sort((a, b) => a[0] - b[0]);
    grid.appendChild(Charts.line(key, points, pick, Tooltip));
  }
  const hint = h("p", {class: "hint", text: state.metrics.length
    ? "Click a point to open that step's samples." : "No metrics.jsonl rows yet."});
  section.replaceChildren(summary, hint, grid);
}

// ---- samples table ----------------------------------------------------------------------
const FILTERS = [["step_min", "step ≥"], ["step_max", "step ≤"], ["reward_min", "reward ≥"],
                 ["reward_max", "reward ≤"], ["stale_min", "stale ≥"], ["stale_max", "stale ≤"],
                 ["gap_min", "max |gap| ≥"], ["gap_max", "max |gap| ≤"]];

function filterForm(params) {
  const apply = () => {
    const next = {view: "samples", sort: params.sort, desc: params.desc};
    for (const input of form.querySelectorAll("[name]")) next[input.name] = input.value;
    navigate(next);
  };
  const form = h("form", {class: "filters", onsubmit: (e) => { e.preventDefault(); apply(); }});
  for (const [name, label] of FILTERS) {
    form.append(h("label", {}, label, h("input", {name, type: "number", step: "any", value: params[name] ?? "",
                                                   class: "num-input", onchange: apply})));
  }
  const select = (name, label, pairs) => h("label", {}, label,
    h("select", {name, onchange: apply}, ...options(pairs, params[name])));
  form.append(select("mask", "mask", [["", "any"], ["none", "no masked token"],
                                      ...[...state.reasons].sort().map((r) => [r, r])]));
  form.append(select("finish", "finish", [["", "any"], ...[...state.finishes].sort().map((f) => [f, f])]));
  form.append(h("label", {}, "text", h("input", {name: "text", type: "search", value: params.text ?? "",
                                                  placeholder: "id, prompt or completion", onchange: apply})));
  form.append(h("button", {type: "submit", text: "apply"}),
              h("button", {type: "button", text: "clear", onclick: () => navigate({view: "samples"})}));
  return form;
}

function cell(row, key) {
  const value = row[key];
  if (key === "id") {
    return h("td", {}, link(value, {view: "sample", id: value, step: row.step}, {class: "sample-link"}));
  }
  if (key === "group") return h("td", {}, link(value, {view: "group", id: value}));
  if (key === "text") return h("td", {class: "preview", text: visible(value), title: visible(value)});
  if (key === "masked") {
    const reasons = Object.entries(row.reasons || {}).map(([r, n]) => `${r} ${n}`).join(", ");
    return h("td", {class: "num", text: short(value), title: reasons || "no token masked or changed"});
  }
  if (key === "versions") {
    return h("td", {class: "num", text: `${value} (${versionSpan(row.version_min, row.version_max)})`});
  }
  if (key === "max_gap") {
    return h("td", {class: "num", text: short(value), title: String(value),
                    ...(value === 0 ? {"data-exact": "0"} : {})});
  }
  return h("td", {class: typeof value === "number" ? "num" : "", text: short(value)});
}

function renderSamples(section, params) {
  const sort = SORT_KEYS.includes(params.sort) ? params.sort : "step";
  const desc = params.desc === "1";
  const perPage = Math.min(500, Math.max(1, Number(params.per_page) || 50));
  const selected = sortRows(state.rows.filter(compileFilter(params)), sort, desc);
  const pages = Math.max(1, Math.ceil(selected.length / perPage));
  const page = Math.min(pages, Math.max(1, Number(params.page) || 1));
  const shown = selected.slice((page - 1) * perPage, page * perPage);
  // Deterministic runs get a column of the tokens whose gap is not 0 (what the banner counts).
  const columns = state.run.deterministic
    ? COLUMNS.flatMap((c) => c[0] === "max_gap" ? [c, ["det_nonzero", "gap ≠ 0"]] : [c]) : COLUMNS;
  const head = h("tr", {}, ...columns.map(([key, label]) => {
    if (!SORT_KEYS.includes(key)) return h("th", {text: label});
    const active = key === sort;
    const next = {...params, view: "samples", sort: key, desc: active && !desc ? "1" : "", page: ""};
    return h("th", {class: active ? `sorted ${desc ? "desc" : "asc"}` : "sortable"},
             link(label + (active ? (desc ? " ▼" : " ▲") : ""), next, {class: "sort", "data-sort": key}));
  }));
  const body = h("tbody", {}, ...shown.map((row) => h("tr", {dataset: {id: row.id, step: String(row.step)}},
    ...columns.map(([key]) => cell(row, key)))));
  const turn = (label, to, allowed) => allowed ? link(label, {...params, view: "samples", page: to})
                                               : h("span", {text: label, class: "off"});
  const info = `page ${page} of ${pages} · ${selected.length} of ${state.rows.length} samples`;
  const pager = h("div", {class: "pager"}, turn("‹ previous", page - 1, page > 1),
                  h("span", {class: "page-info", text: info}), turn("next ›", page + 1, page < pages));
  section.replaceChildren(filterForm(params), pager,
                          h("table", {class: "samples"}, h("thead", {}, head), body));
}

// ---- banner, router, live --------------------------------------------------------------
function renderBanner() {
  const banner = document.getElementById("banner");
  if (!state.run.deterministic) { banner.hidden = true; return; }
  let tokens = 0, nonzero = 0;
  for (const row of state.rows) { tokens += row.det_tokens || 0; nonzero += row.det_nonzero || 0; }
  banner.hidden = false;
  banner.className = nonzero ? "banner bad" : "banner good";
  banner.replaceChildren(
    `Deterministic run: ${nonzero} of ${tokens} compared tokens have a gap that is not exactly 0`,
    nonzero ? h("span", {}, " · ", link("show those samples first",
                                        {view: "samples", sort: "det_nonzero", desc: "1"},
                                        {id: "banner-link"}))
            : ".");
}

async function render() {
  const started = performance.now();
  Tooltip.hide();
  const params = readHash();
  const view = VIEWS.includes(params.view) ? params.view : "overview";
  for (const name of VIEWS) {
    document.getElementById(`view-${name}`).hidden = name !== view;
    const tab = document.querySelector(`nav a[data-view="${name}"]`);
    if (tab) tab.classList.toggle("active", name === view);
  }
  const section = document.getElementById(`view-${view}`);
  if (view === "overview") renderOverview(section);
  else if (view === "samples") renderSamples(section, params);
  else if (view === "sample") await Views.sample(section, params);
  else if (view === "group") await Views.group(section, params);
  else if (view === "buffer") await Views.buffer(section, params);
  document.body.dataset.renderMs = (performance.now() - started).toFixed(1);
  document.body.dataset.renderedHash = location.hash;   // tests and screenshots wait on this
}

function showStatus() {
  const status = document.getElementById("live");
  status.textContent = Source.live
    ? `live · ${state.rows.length} samples · updated ${new Date(state.updatedAt).toLocaleTimeString()}`
    : `static export · ${state.rows.length} samples`;
}

// The server's index or metrics file was rewritten (a resume rewinds both): every row the page
// holds may be stale, so they are all fetched again rather than appended to.
async function reload() {
  const [index, metrics] = await Promise.all([Source.index(0), Source.metrics(0)]);
  state.rows = [];
  state.finishes.clear();
  state.reasons.clear();
  addRows(index.rows);
  state.metrics = metrics.rows;
  state.generation = index.generation ?? 0;
}

function stale(index, metrics) {
  return (index.generation ?? 0) !== state.generation ||
         (metrics.generation ?? 0) !== state.generation;
}

async function poll() {
  try {
    let [index, metrics] = await Promise.all([Source.index(state.rows.length),
                                              Source.metrics(state.metrics.length)]);
    state.updatedAt = Date.now();
    let changed = index.rows.length || metrics.rows.length;
    if (stale(index, metrics)) {
      await reload();
      [index, metrics] = [{rows: []}, {rows: []}];
      changed = true;
    }
    addRows(index.rows);
    state.metrics.push(...metrics.rows);
    showStatus();
    const view = readHash().view || "overview";
    if (changed) {
      renderBanner();
      if (view === "overview" || view === "samples") await render();
    }
  } catch (error) {
    document.getElementById("live").textContent = `not updating: ${error.message}`;
  }
  setTimeout(poll, 2000);
}

async function main() {
  state.run = await Source.run();
  document.getElementById("run-name").textContent = state.run.name;
  await reload();
  state.updatedAt = Date.now();
  renderBanner();
  showStatus();
  window.addEventListener("hashchange", () => render());
  await render();
  document.body.dataset.readyMs = performance.now().toFixed(1);   // since navigation start
  document.body.dataset.ready = "1";
  if (Source.live) setTimeout(poll, 2000);
}

main().catch((error) => {
  document.getElementById("live").textContent = `error: ${error.message}`;
});
