// Charts through Chart.js (vendor/chart.umd.js sets window.Chart). Every chart a page
// draws is kept here and destroyed when the page changes; each canvas carries
// data-chart="<name>" so that a test can find it and read its data (Chart.getChart).
import { h } from "./ui.js";

const live = new Set();
const DRAW_FRAMES_MAX = 120;
const PALETTE = ["--c1", "--c2", "--c3", "--c4", "--c5", "--c6"];

export function colors(count) {
  const style = getComputedStyle(document.documentElement);
  return Array.from({ length: count }, (_, i) => style.getPropertyValue(PALETTE[i % PALETTE.length]).trim());
}

function library() {
  if (!window.Chart) throw new Error("Chart.js did not load (vendor/chart.umd.js)");
  // An admin console: no animation (a chart is right at once, and tests need not wait).
  window.Chart.defaults.animation = false;
  return window.Chart;
}

// A canvas in a sized box, and the chart drawn on it from `config`.
export function chart(name, config, label) {
  const canvas = h("canvas", { "data-chart": name, role: "img", "aria-label": label || name });
  const box = h("div", { class: "chart-box" }, canvas);
  const Chart = library();
  // Drawn once the box is in the document (Chart.js sizes the canvas from its box); a
  // box never placed within DRAW_FRAMES_MAX frames was dropped by its page.
  let frames = 0;
  const draw = () => {
    if (!canvas.isConnected) {
      if (++frames < DRAW_FRAMES_MAX) requestAnimationFrame(draw);
      return;
    }
    const made = new Chart(canvas, {
      ...config,
      options: { responsive: true, maintainAspectRatio: false, ...config.options },
    });
    live.add(made);
  };
  requestAnimationFrame(draw);
  return box;
}

export function bar(name, labels, datasets, { stacked = false, horizontal = false, label } = {}) {
  const palette = colors(Math.max(labels.length, datasets.length));
  return chart(
    name,
    {
      type: "bar",
      data: {
        labels,
        datasets: datasets.map((set, i) => ({
          backgroundColor: datasets.length === 1 ? palette.slice(0, labels.length) : palette[i],
          ...set,
        })),
      },
      options: {
        indexAxis: horizontal ? "y" : "x",
        plugins: { legend: { display: datasets.length > 1 } },
        scales: { x: { stacked, beginAtZero: true }, y: { stacked, beginAtZero: true } },
      },
    },
    label,
  );
}

// Lines over shared labels; a dataset with `yAxisID: "y1"` is read on a second axis at the
// right (points on the left, money on the right).
export function line(name, labels, datasets, { label, y, y1 } = {}) {
  const palette = colors(datasets.length);
  const twoAxes = datasets.some((set) => set.yAxisID === "y1");
  const scales = { y: { beginAtZero: true, title: { display: Boolean(y), text: y } } };
  if (twoAxes) {
    scales.y1 = { beginAtZero: true, position: "right", grid: { drawOnChartArea: false },
      title: { display: Boolean(y1), text: y1 } };
  }
  return chart(
    name,
    {
      type: "line",
      data: {
        labels,
        datasets: datasets.map((set, i) => ({
          borderColor: palette[i], backgroundColor: palette[i], tension: 0, pointRadius: 3, ...set,
        })),
      },
      options: { plugins: { legend: { display: datasets.length > 1 } }, scales },
    },
    label,
  );
}

export function doughnut(name, labels, values, { label } = {}) {
  return chart(
    name,
    {
      type: "doughnut",
      data: { labels, datasets: [{ data: values, backgroundColor: colors(labels.length) }] },
      options: { plugins: { legend: { position: "bottom" } } },
    },
    label,
  );
}

export function destroyCharts() {
  for (const made of live) made.destroy();
  live.clear();
}
