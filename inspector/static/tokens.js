// slipstream inspector: colour scales and the token view's rendering.
//
// Every scale is fixed (the same numbers get the same colour in every sample and every run), so
// two samples can be compared by eye; values past the ends saturate and the legend says so.
// Masked tokens (no policy gradient) are drawn apart, hatched, and never coloured, so they do
// not stretch or hide the scale. A bitwise-equal token (gap exactly 0) has its own colour.
// Model text is only ever assigned with textContent.
"use strict";

const Scales = (() => {
  // Colour stops as [position in 0..1, [r, g, b]].
  const SEQUENTIAL = [[0, [255, 247, 188]], [0.5, [254, 153, 41]], [1, [153, 52, 4]]];
  const DIVERGING = [[0, [33, 102, 172]], [0.5, [247, 247, 247]], [1, [178, 24, 43]]];
  const PURPLE = [[0, [242, 240, 247]], [0.5, [158, 154, 200]], [1, [63, 0, 125]]];
  const LAG_COLOURS = ["rgb(161, 217, 155)", "rgb(255, 237, 160)", "rgb(253, 174, 107)",
                       "rgb(227, 74, 51)"];
  const EXACT_ZERO = "rgb(255, 255, 255)";
  // Pink to green, not the weight view's blue to red: the two diverging views must not be
  // read for one another.
  const PINK_GREEN = [[0, [197, 27, 125]], [0.5, [247, 247, 247]], [1, [77, 146, 33]]];
  const NO_SCORE = "rgb(189, 189, 189)";

  function interpolate(stops, t) {
    const x = Math.min(1, Math.max(0, t));
    for (let i = 1; i < stops.length; i++) {
      const [p1, c1] = stops[i];
      const [p0, c0] = stops[i - 1];
      if (x <= p1) {
        const f = p1 === p0 ? 0 : (x - p0) / (p1 - p0);
        const c = c0.map((v, k) => Math.round(v + (c1[k] - v) * f));
        return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
      }
    }
    const last = stops[stops.length - 1][1];
    return `rgb(${last[0]}, ${last[1]}, ${last[2]})`;
  }

  // |trainer - sampler| on log10 from 1e-8 to 1: float32 rounding sits near the bottom,
  // staleness drift in the middle, a broken sync (0.1 and up) at the top.
  function gap(value) {
    const magnitude = Math.abs(value);
    if (magnitude === 0) return EXACT_ZERO;
    return interpolate(SEQUENTIAL, (Math.log10(magnitude) + 8) / 8);
  }

  // The importance weight on log2 from 0.5 to 2: 1 is white, below blue, above red.
  function weight(value) {
    if (!(value > 0)) return interpolate(DIVERGING, 0);
    return interpolate(DIVERGING, (Math.log2(value) + 1) / 2);
  }

  // teacher - student logprob in nats, signed and on log10 |gap| from 0.01 to 10 (a gap spans
  // rounding noise to tokens the teacher all but forbids): |gap| <= 0.01 is white, positive
  // (the teacher likes the token more than the student) green, negative pink. A NaN score is
  // grey, off the scale, rather than a colour it would be mistaken for.
  function teacherGap(value) {
    if (typeof value !== "number" || Number.isNaN(value)) return NO_SCORE;
    const magnitude = Math.abs(value);
    if (magnitude <= 0.01) return interpolate(PINK_GREEN, 0.5);
    const reach = Math.min(1, (Math.log10(magnitude) + 2) / 3);
    return interpolate(PINK_GREEN, 0.5 + Math.sign(value) * reach / 2);
  }

  // -sampler logprob in nats, linear from 0 to 10.
  function surprisal(value) { return interpolate(PURPLE, value / 10); }

  // Weight version by its lag behind the learner: 0, 1, 2, 3 or more.
  function lag(value) { return LAG_COLOURS[Math.min(Math.max(value, 0), 3)]; }

  const MODES = {
    gap: {label: "gap |trainer - sampler|", value: (t) => Math.abs(t.gap), colour: gap,
          ticks: [[0, "exactly 0"], [1e-8, "≤1e-8"], [1e-6, "1e-6"], [1e-4, "1e-4"],
                  [1e-2, "1e-2"], [1, "≥1"]]},
    weight: {label: "importance weight (after clipping)", value: (t) => t.weight, colour: weight,
             ticks: [[0.5, "≤0.5"], [0.8, "0.8"], [1, "1"], [1.25, "1.25"], [2, "≥2"]]},
    version: {label: "weight version (lag behind learner)", value: (t) => t.lag, colour: lag,
              ticks: [[0, "lag 0"], [1, "lag 1"], [2, "lag 2"], [3, "lag ≥3"]]},
    surprisal: {label: "surprisal -log p (sampler, nats)", value: (t) => t.surprisal,
                colour: surprisal,
                ticks: [[0, "0"], [2.5, "2.5"], [5, "5"], [7.5, "7.5"], [10, "≥10"]]},
    // Offered only for a sample with teacher scores (views.js), so `t.teacher` is there.
    teacher: {label: "teacher gap (teacher − student logprob)",
              value: (t) => t.teacher ? t.teacher.gap : NaN, colour: teacherGap,
              sign: "green: the teacher likes the token more than the student; " +
                    "pink: less; white: within 0.01 nats",
              ticks: [[-10, "≤−10"], [-1, "−1"], [-0.1, "−0.1"], [0, "0"], [0.1, "+0.1"],
                      [1, "+1"], [10, "≥+10"], [NaN, "no score (NaN)"]]},
  };

  function luminance(rgb) {
    const [r, g, b] = rgb.match(/\d+/g).map(Number);
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  }

  return {gap, weight, surprisal, lag, teacherGap, MODES, luminance, EXACT_ZERO};
})();

const TokenView = (() => {
  // A token's teacher numbers from the record's `teacher_view` (inspector/teacher.py, which
  // computed the gap and checked every field), never from the raw teacher fields.
  function teacherOf(view, i) {
    return {
      logprob: view.teacher_T[i], student: view.student_T[i], source: view.student,
      gap: view.gap_T[i], top1: view.top1_T ? view.top1_T[i] : undefined,
      top1Logprob: view.top1_logprob_T ? view.top1_logprob_T[i] : null,
      members: view.members.map((m) => [m.name, m.weight, m.logprobs_T[i]]),
      membersLeftOut: view.members_left_out,
    };
  }

  // One record per token with every number the view shows; `masked` tokens are drawn apart.
  function tokensOf(record) {
    const s = record.sample;
    const view = record.teacher_view && record.teacher_view.available ? record.teacher_view : null;
    const n = s.sampler_logprobs_T.length;
    const texts = s.token_texts_T && s.token_texts_T.length === n ? s.token_texts_T : null;
    const own = record.own_version_logprobs_T || null;
    const tokens = [];
    for (let i = 0; i < n; i++) {
      const sampler = s.sampler_logprobs_T[i];
      const trainer = record.trainer_logprobs_T[i];
      const weights = record.importance_weights_T || [];
      tokens.push({
        index: i, id: s.completion_ids_T[i],
        text: texts ? texts[i] : `⟨${s.completion_ids_T[i]}⟩`,
        sampler, trainer, gap: trainer - sampler, surprisal: -sampler,
        weight: weights.length === n ? weights[i] : Math.exp(trainer - sampler),
        weightRecorded: weights.length === n,
        masked: (record.masked_T || [])[i] === true,
        reason: (record.mask_reasons_T || [])[i] || "",
        env: (s.env_tokens_T || [])[i] === true,   // a multi-turn env wrote it: nothing sampled
        version: s.versions_T[i], lag: record.learner_version - s.versions_T[i],
        own: own ? own[i] : null,
        teacher: view ? teacherOf(view, i) : null,
      });
    }
    return tokens;
  }

  function fmt(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value !== "number") return String(value);
    return String(value);   // shortest round-trip form: bitwise what was written
  }

  // The lines of a token's tooltip, as [label, value] pairs (values are plain strings).
  function details(token) {
    if (token.env) {
      return [["token", `#${token.index}  id ${token.id}`],
              ["text", visible(JSON.stringify(token.text))],
              ["written by", "the env (its turn; not sampled, never trained on)"],
              ["weight version", `${token.version} (the policy turn before it)`]];
    }
    const rows = [
      ["token", `#${token.index}  id ${token.id}`],
      ["text", visible(JSON.stringify(token.text))],
      ["sampler logprob", fmt(token.sampler)],
      ["trainer logprob", fmt(token.trainer)],
      ["gap (trainer - sampler)", fmt(token.gap)],
      ["importance weight", fmt(token.weight) + (token.weightRecorded ? "" : " (ratio; not recorded)")],
      ["masked", token.masked ? "yes" : "no"],
      ["mask reason", token.reason || "—"],
      ["weight version", `${token.version} (lag ${token.lag})`],
      ["surprisal (nats)", fmt(token.surprisal)],
    ];
    if (token.own !== null) rows.push(["own-version trainer logprob", fmt(token.own)]);
    if (token.teacher) rows.push(...teacherDetails(token));
    return rows;
  }

  function teacherDetails(token) {
    const t = token.teacher;
    const leaning = t.gap > 0 ? " (the teacher likes it more)"
      : t.gap < 0 ? " (the teacher likes it less)" : t.gap === 0 ? " (equal)" : "";
    const rows = [["teacher logprob", fmt(t.logprob)],
                  [`student logprob (${t.source})`, fmt(t.student)],
                  ["teacher gap (teacher − student)", fmt(t.gap) + leaning]];
    if (t.top1 !== undefined) {
      const which = t.top1 === null ? "—" : `id ${t.top1}` +
        (t.top1 === token.id ? " (the generated token)" : " (not the generated token)") +
        (t.top1Logprob === null ? "" : `, logprob ${fmt(t.top1Logprob)}`);
      rows.push(["teacher top-1", which]);
    }
    // Member names are user strings: shown as text, control and bidi characters escaped.
    for (const [name, weight, logprob] of t.members) {
      rows.push([`member ${visible(name)}` + (weight === null ? "" : ` (weight ${fmt(weight)})`),
                 fmt(logprob)]);
    }
    if (t.membersLeftOut) rows.push(["members not shown", String(t.membersLeftOut)]);
    return rows;
  }

  function colourOf(token, mode) {
    const scale = Scales.MODES[mode];
    return scale.colour(scale.value(token));
  }

  // Draw the tokens into `container` (cleared first). Returns the token records.
  function render(container, record, mode) {
    const tokens = tokensOf(record);
    const fragment = document.createDocumentFragment();
    let previousVersion = null;
    for (const token of tokens) {
      const span = document.createElement("span");
      span.className = "tok";
      span.dataset.i = String(token.index);
      if (token.text === "") {
        span.classList.add("tok-empty");   // bytes of a character completed by the next token
      } else {
        span.textContent = visible(token.text);
      }
      if (previousVersion !== null && token.version !== previousVersion) {
        span.classList.add("vchange");
        span.dataset.version = `v${token.version}`;
      }
      previousVersion = token.version;
      if (token.env) {
        span.classList.add("env");      // the env's turn: set apart, never on a scale
      } else if (token.masked) {
        span.classList.add("masked");
      } else {
        const colour = colourOf(token, mode);
        span.style.backgroundColor = colour;
        if (Scales.luminance(colour) < 110) span.classList.add("on-dark");
        if (mode === "gap" && token.gap === 0) span.classList.add("exact0");
      }
      fragment.appendChild(span);
    }
    container.replaceChildren(fragment);
    return tokens;
  }

  function legend(container, mode, versionsPresent) {
    const scale = Scales.MODES[mode];
    const title = document.createElement("span");
    title.className = "legend-title";
    title.textContent = scale.label + ":";
    const items = [title];
    for (const [value, label] of scale.ticks) {
      const item = document.createElement("span");
      item.className = "legend-item";
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.backgroundColor = scale.colour(value);
      item.append(swatch, document.createTextNode(label));
      items.push(item);
    }
    const masked = document.createElement("span");
    masked.className = "legend-item";
    const hatch = document.createElement("span");
    hatch.className = "swatch masked";
    masked.append(hatch, document.createTextNode("masked (not on the scale)"));
    const mark = document.createElement("span");
    mark.className = "legend-item";
    const bar = document.createElement("span");
    bar.className = "swatch vmark";
    mark.append(bar, document.createTextNode("weight version changes"));
    items.push(masked, mark);
    if (scale.sign) items.push(h("span", {class: "legend-sign", text: scale.sign}));
    if (versionsPresent) {
      const note = document.createElement("span");
      note.className = "legend-note";
      note.textContent = versionsPresent;
      items.push(note);
    }
    container.replaceChildren(...items);
  }

  return {tokensOf, render, legend, details, fmt};
})();
