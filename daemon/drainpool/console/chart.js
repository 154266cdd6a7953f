// drainpool console: the chart of outcomes per minute over the last hour.
// Plain SVG built with createElementNS and text nodes (nothing fetched from
// elsewhere, no inline style, which the content security policy would refuse):
// one stacked bar per minute, a y axis with a few round steps, time labels every
// ten minutes, and a legend with the hour's totals. Its data comes from
// GET /api/outcomes/minutes, the counts kept in the queue's storage.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  // Drawn bottom up in this order; colours chosen to stay apart for colour-blind eyes too.
  const SERIES = [
    ["completed", "#2e9d5b"],
    ["failed", "#e8833a"],
    ["interrupted", "#3b6fd8"],
    ["cancelled", "#8a8f99"],
    ["aborted", "#9b59b6"],
    ["timed_out", "#b8860b"],
    ["dead", "#c0392b"],
  ];
  const WIDTH = 900;
  const HEIGHT = 240;
  const PAD = { left: 44, right: 12, top: 12, bottom: 28 };

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // The smallest of 1, 2, 5 x 10^k steps that shows `max` in at most four steps.
  function niceStep(max) {
    const rough = Math.max(max, 1) / 4;
    const power = 10 ** Math.floor(Math.log10(rough));
    for (const m of [1, 2, 5, 10]) if (m * power >= rough) return Math.max(m * power, 1);
    return 10 * power;
  }

  function hhmm(epochSeconds) {
    const when = new Date(epochSeconds * 1000);
    return String(when.getHours()).padStart(2, "0") + ":" + String(when.getMinutes()).padStart(2, "0");
  }

  function draw(minutes) {
    const plotW = WIDTH - PAD.left - PAD.right;
    const plotH = HEIGHT - PAD.top - PAD.bottom;
    const totals = minutes.map((m) => SERIES.reduce((sum, [name]) => sum + (m[name] || 0), 0));
    const step = niceStep(Math.max(0, ...totals));
    const top = step * Math.max(1, Math.ceil(Math.max(0, ...totals) / step));
    const y = (n) => PAD.top + plotH - (n / top) * plotH;
    const slot = plotW / Math.max(minutes.length, 1);
    const root = svg("svg", {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      class: "chart",
      role: "img",
      "aria-label": "Job outcomes per minute over the last hour",
    });
    for (let n = 0; n <= top; n += step) {
      root.append(
        svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(n), y2: y(n), class: "grid-line" }),
        svg("text", { x: PAD.left - 6, y: y(n) + 4, "text-anchor": "end", class: "axis-label" }, n),
      );
    }
    minutes.forEach((m, i) => {
      const x = PAD.left + i * slot;
      let base = 0;
      const tip = [hhmm(m.minute)];
      for (const [name, colour] of SERIES) {
        const n = m[name] || 0;
        if (n > 0) {
          tip.push(name + " " + n);
          root.append(
            svg("rect", {
              x: x + slot * 0.12,
              width: slot * 0.76,
              y: y(base + n),
              height: y(base) - y(base + n),
              fill: colour,
              class: "bar",
              "data-outcome": name,
              "data-n": n,
              "data-minute": m.minute,
            }),
          );
          base += n;
        }
      }
      if (base > 0) root.lastChild.append(svg("title", {}, tip.join(", ")));
      if (m.minute % 600 === 0) {
        root.append(
          svg("line", { x1: x, x2: x, y1: PAD.top + plotH, y2: PAD.top + plotH + 4, class: "axis" }),
          svg("text", { x, y: HEIGHT - 8, "text-anchor": "middle", class: "axis-label" }, hhmm(m.minute)),
        );
      }
    });
    root.append(
      svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: PAD.top + plotH, y2: PAD.top + plotH, class: "axis" }),
      svg("text", { x: 12, y: PAD.top + plotH / 2, class: "axis-label", transform: `rotate(-90 12 ${PAD.top + plotH / 2})`, "text-anchor": "middle" }, "jobs / min"),
    );
    return root;
  }

  function legend(minutes) {
    const { el } = window.drainpool;
    return SERIES.map(([name, colour]) => {
      const total = minutes.reduce((sum, m) => sum + (m[name] || 0), 0);
      const swatch = svg("svg", { viewBox: "0 0 10 10", class: "swatch" }, svg("rect", { width: 10, height: 10, rx: 2, fill: colour }));
      return el("span", { class: "legend-item", data: { outcome: name } }, swatch, name + " ", el("b", {}, total));
    });
  }

  window.drainpool.renderChart = (data) => {
    const target = document.getElementById("outcome-chart");
    target.replaceChildren(draw(data.minutes));
    document.getElementById("chart-legend").replaceChildren(...legend(data.minutes));
  };
})();
