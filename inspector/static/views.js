// slipstream inspector: the token view of one sample, the group view of one prompt's siblings,
// and the buffer view (what waits, its age against max_lag, evictions by reason).
"use strict";

const Views = (() => {
  const MODES = ["gap", "weight", "version", "surprisal"];

  function chips(pairs) {
    return h("div", {class: "chips"}, ...pairs.map(([label, value, cls]) =>
      h("span", {class: `chip ${cls || ""}`}, h("span", {class: "chip-label", text: label}),
        h("span", {class: "chip-value", text: value}))));
  }

  function notFound(section, what) {
    section.replaceChildren(h("p", {class: "empty", text: `${what} is not in this run` +
      (Source.live ? "." : " or was not included in this export.")}));
  }

  function detailTable(rows) {
    return h("table", {class: "detail"}, ...rows.map(([label, value]) =>
      h("tr", {}, h("th", {text: label}), h("td", {text: value}))));
  }

  // Who scored a distillation sample, from its checked `teacher_view` (inspector/teacher.py);
  // nothing for a sample no teacher was asked about. Ids and errors are user strings.
  function teacherChips(view) {
    if (!view) return [];
    const failed = typeof view.error === "string";
    if (!view.id && !failed && !view.available && !view.malformed) return [];
    const pairs = [["teacher", view.id ? visible(view.id) : "—"]];
    if (typeof view.version === "number") pairs.push(["teacher version", String(view.version)]);
    if (failed) pairs.push(["teacher error", visible(view.error), "bad"]);
    if (view.available) pairs.push(["mean teacher gap", short(view.mean_gap)]);
    else pairs.push(["teacher scores", view.malformed ? "malformed" : "none", "bad"]);
    return pairs;
  }

  // The colour modes this sample offers: the teacher gap only where a teacher scored it, so a
  // sample without scores is never drawn as a flat, all-zero teacher colouring. Asked for one
  // anyway (a shared URL, the next sample of a run), the page says why and shows the gap view.
  function colourChoice(record, params) {
    const view = record.teacher_view;
    const modes = view && view.available ? [...MODES, "teacher"] : MODES;
    const mode = modes.includes(params.color) ? params.color : "gap";
    const choices = options(modes.map((m) => [m, Scales.MODES[m].label]), mode);
    if (view && !view.available && (view.id || typeof view.error === "string" || view.malformed)) {
      choices.push(h("option", {value: "teacher", disabled: "", title: view.reason,
                                text: "teacher gap (no teacher scores in this sample)"}));
    }
    const modeSelect = h("select", {id: "color-mode", onchange: (e) => navigate({...params, color: e.target.value})},
                         ...choices);
    const missing = params.color === "teacher" && mode !== "teacher"
      ? h("div", {class: "banner warn", id: "teacher-missing",
                  text: `${view ? view.reason : "No teacher scores for this sample."} ` +
                        "Showing the gap |trainer - sampler| instead."})
      : null;
    return {mode, modeSelect, missing};
  }

  async function sample(section, params) {
    let record;
    try {
      record = await Source.sample(params.id, params.step);
    } catch (error) {       // the server's readable reason, e.g. a step file rewritten shorter
      section.replaceChildren(h("p", {class: "empty", id: "sample-error", text: error.message}));
      return;
    }
    if (!record) { notFound(section, `sample ${params.id || "?"} at step ${params.step || "?"}`); return; }
    const s = record.sample;
    const versions = [...new Set(s.versions_T)].sort((a, b) => a - b);
    const header = h("h2", {}, "sample ", h("code", {text: s.sample_id}), " · step ",
                     String(record.step), " · group ", link(s.group_id, {view: "group", id: s.group_id}));
    const meta = chips([
      ["reward", String(s.reward), s.reward_error ? "bad" : ""],
      ...(s.reward_error ? [["reward error", s.reward_error, "bad"]] : []),
      ...Object.entries(s.reward_parts || {}).map(([k, v]) => [`reward.${k}`, String(v)]),
      ["advantage", String(record.advantage)], ["finish", s.finish_reason],
      ["tokens", String(s.completion_ids_T.length)], ["learner version", String(record.learner_version)],
      ["weight versions", versions.map((v) => `v${v}`).join(", ")],
      ["staleness", String(record.learner_version - (versions.length ? versions[0] : record.learner_version))],
      ["reuse", String(record.reuse_count ?? 0)], ...teacherChips(record.teacher_view)]);
    const {mode, modeSelect, missing} = colourChoice(record, params);
    const legend = h("div", {class: "legend", id: "legend"});
    const tokensBox = h("div", {class: "tokens", id: "tokens"});
    const panel = h("div", {class: "token-detail", id: "token-detail"},
                    h("p", {class: "hint", text: "Hover a token for its numbers; click to pin them here."}));
    const started = performance.now();
    const tokens = TokenView.render(tokensBox, record, mode);
    const elapsed = performance.now() - started;
    section.dataset.renderMs = elapsed.toFixed(2);
    const spans = versions.map((v) => `v${v}`).join(" → ");
    const present = versions.length > 1 ? `this sample spans ${spans}` : "";
    TokenView.legend(legend, mode, present);
    tokensBox.addEventListener("mousemove", (event) => {
      const span = event.target.closest(".tok");
      if (!span) { Tooltip.hide(); return; }
      Tooltip.show(event, TokenView.details(tokens[Number(span.dataset.i)]));
    });
    tokensBox.addEventListener("mouseleave", () => Tooltip.hide());
    tokensBox.addEventListener("click", (event) => {
      const span = event.target.closest(".tok");
      if (!span) return;
      for (const old of tokensBox.querySelectorAll(".pinned")) old.classList.remove("pinned");
      span.classList.add("pinned");
      panel.replaceChildren(h("h3", {text: `token #${span.dataset.i}`}),
                            detailTable(TokenView.details(tokens[Number(span.dataset.i)])));
    });
    const timing = h("p", {class: "hint", id: "render-time",
                           text: `${tokens.length} tokens drawn in ${elapsed.toFixed(1)} ms`});
    section.replaceChildren(header, meta,
      h("div", {class: "toolbar"}, h("label", {}, "colour by ", modeSelect)),
      ...(missing ? [missing] : []), legend,
      h("div", {class: "token-layout"}, tokensBox, panel), timing,
      textBlock("prompt", s.prompt_text), textBlock("completion text", s.completion_text));
  }

  async function group(section, params) {
    const rows = state.rows.filter((r) => r.group === params.id);
    if (!rows.length) { notFound(section, `group ${params.id || "?"}`); return; }
    // A sibling whose record cannot be read shows its index preview instead.
    const records = await Promise.all(rows.map((r) => Source.sample(r.id, r.step).catch(() => null)));
    const rewards = rows.map((r) => r.reward);
    const zeroVariance = rewards.every((r) => r === rewards[0]);
    const parts = [h("h2", {}, "group ", h("code", {text: params.id}), ` · ${rows.length} samples`)];
    if (zeroVariance) {
      parts.push(h("div", {class: "banner warn", id: "zero-variance",
        text: `Zero-variance group: every reward is ${rewards[0]}, so every advantage is 0 ` +
              "and this prompt gave no learning signal."}));
    }
    const prompt = records.find((r) => r)?.sample.prompt_text;
    if (prompt !== undefined) parts.push(textBlock("prompt", prompt));
    const cards = rows.map((row, i) => {
      const record = records[i];
      return h("div", {class: "sibling", dataset: {id: row.id}},
        h("div", {class: "sibling-head"}, link(row.id, {view: "sample", id: row.id, step: row.step})),
        chips([["reward", String(row.reward)],
               ["advantage", short(row.advantage), row.advantage > 0 ? "good" : row.advantage < 0 ? "bad" : ""],
               ["step", String(row.step)], ["finish", row.finish], ["tokens", String(row.len)],
               ["max |gap|", short(row.max_gap)], ["stale", String(row.staleness)]]),
        h("pre", {class: "text", text: visible(record ? record.sample.completion_text : row.text)}));
    });
    parts.push(h("div", {class: "siblings"}, ...cards));
    section.replaceChildren(...parts);
  }

  async function buffer(section, params) {
    const info = await Source.buffer(params.snapshot);
    if (!info || !info.snapshots.length) {
      section.replaceChildren(h("p", {class: "empty", text: "No buffer snapshots in this run (DIR/buffer/)."}));
    } else {
      section.replaceChildren();
    }
    const parts = [];
    if (info && info.snapshots.length) {
      const select = h("select", {id: "snapshot", onchange: (e) => navigate({view: "buffer", snapshot: e.target.value})},
                       ...options(info.snapshots.map((n) => [n, n]), info.snapshot));
      const ages = {};
      for (const row of info.rows) ages[row.age] = (ages[row.age] || 0) + 1;
      const groups = new Set(info.rows.map((r) => r.group)).size;
      parts.push(h("div", {class: "toolbar"}, h("label", {}, "snapshot ", select)),
        chips([["samples held", String(info.rows.length)], ["groups", String(groups)],
               ["replay samples", String(info.rows.filter((r) => r.held === "replay").length)],
               ...Object.entries(ages).map(([age, n]) => [`age ${age}`, String(n)])]));
      const head = headerRow(["ticket", "group", "sample", "held", "age / bound", "versions", "reuse",
                              "tokens", "reward", "completion"]);
      const body = info.rows.map((r) => h("tr", {},
        h("td", {class: "num", text: String(r.ticket)}), h("td", {text: r.group}), h("td", {text: r.id}),
        h("td", {text: r.held}),
        h("td", {class: `num ${r.age > r.max_lag ? "over" : r.age === r.max_lag ? "at-bound" : ""}`,
                 text: `${r.age} / ${r.max_lag}`}),
        h("td", {text: versionSpan(r.version_min, r.version_max)}),
        h("td", {class: "num", text: String(r.reuse)}), h("td", {class: "num", text: String(r.len)}),
        h("td", {class: "num", text: short(r.reward)}), h("td", {class: "preview", text: visible(r.text)})));
      parts.push(h("table", {class: "samples", id: "waiting"}, h("thead", {}, head), h("tbody", {}, ...body)));
    }
    const evictions = (info && info.evictions) || [];
    parts.push(h("h3", {text: `evictions · ${evictions.length}`}),
      chips(Object.entries((info && info.eviction_counts) || {})
        .map(([reason, n]) => [reason, String(n), "bad"])));
    if (evictions.length) {
      const head = headerRow(["group", "ticket", "reason", "oldest version", "learner version"]);
      parts.push(h("table", {class: "samples", id: "evictions"}, h("thead", {}, head), h("tbody", {},
        ...evictions.map((e) => h("tr", {}, h("td", {text: e.group_id}), h("td", {class: "num", text: String(e.ticket)}),
          h("td", {text: e.reason}), h("td", {class: "num", text: String(e.oldest_version)}),
          h("td", {class: "num", text: String(e.learner_version)}))))));
    }
    section.append(...parts);
  }

  return {sample, group, buffer};
})();
