// slipstream inspector: small SVG line charts for the run overview (no library: a polyline,
// its points and four labels are all a curve per metric needs). Clicking a point calls
// `onPick(step)`; hovering shows the step and value.
"use strict";

const Charts = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 300, HEIGHT = 140, PAD_L = 52, PAD_R = 10, PAD_T = 10, PAD_B = 22;

  function el(name, attributes) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
    return node;
  }

  function label(value) {
    if (!Number.isFinite(value)) return String(value);
    const magnitude = Math.abs(value);
    if (magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e5)) return value.toExponential(2);
    return String(Number(value.toPrecision(4)));
  }

  // points: [[step, value], ...] sorted by step.
  function line(title, points, onPick, tooltip) {
    const box = document.createElement("figure");
    box.className = "chart";
    const caption = document.createElement("figcaption");
    caption.textContent = title;
    box.appendChild(caption);
    const svg = el("svg", {viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img"});
    svg.setAttribute("aria-label", title);
    const finite = points.filter(([, v]) => Number.isFinite(v));
    if (!finite.length) {
      const empty = el("text", {x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle",
                                class: "axis"});
      empty.textContent = "no finite values";
      svg.appendChild(empty);
      box.appendChild(svg);
      return box;
    }
    const steps = finite.map(([s]) => s), values = finite.map(([, v]) => v);
    let [x0, x1] = [Math.min(...steps), Math.max(...steps)];
    let [y0, y1] = [Math.min(...values), Math.max(...values)];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const sx = (s) => PAD_L + (s - x0) / (x1 - x0) * (WIDTH - PAD_L - PAD_R);
    const sy = (v) => HEIGHT - PAD_B - (v - y0) / (y1 - y0) * (HEIGHT - PAD_T - PAD_B);
    svg.appendChild(el("rect", {x: PAD_L, y: PAD_T, width: WIDTH - PAD_L - PAD_R,
                                height: HEIGHT - PAD_T - PAD_B, class: "plot"}));
    const labels = [[PAD_L - 4, sy(y1) + 4, "end", label(y1)], [PAD_L - 4, sy(y0), "end", label(y0)],
                    [sx(x0), HEIGHT - 6, "start", `step ${x0}`], [sx(x1), HEIGHT - 6, "end", `${x1}`]];
    for (const [x, y, anchor, text] of labels) {
      const node = el("text", {x, y, "text-anchor": anchor, class: "axis"});
      node.textContent = text;
      svg.appendChild(node);
    }
    svg.appendChild(el("polyline", {class: "series",
      points: finite.map(([s, v]) => `${sx(s).toFixed(1)},${sy(v).toFixed(1)}`).join(" ")}));
    for (const [s, v] of finite) {
      const dot = el("circle", {cx: sx(s).toFixed(1), cy: sy(v).toFixed(1), r: 3.5, class: "point"});
      dot.dataset.step = String(s);
      dot.addEventListener("click", () => onPick(s));
      dot.addEventListener("mouseenter", (e) => tooltip.show(e, [["step", String(s)], [title, String(v)]]));
      dot.addEventListener("mouseleave", () => tooltip.hide());
      svg.appendChild(dot);
    }
    box.appendChild(svg);
    return box;
  }

  return {line, label};
})();
