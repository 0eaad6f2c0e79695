// Polls /api/runs and keeps one card per run: figures and four uPlot charts, updated in place.
"use strict";
const POLL_MS = 1000;
const CHART = { width: 300, height: 170 };
const state = { cards: {} };
window.leantrainDashboard = state;  // tests and curious users can read the live chart data

function fmt(value, digits, suffix) {
  if (value === null || value === undefined || Number.isNaN(value)) return "n/a";
  return Number(value).toFixed(digits) + (suffix || "");
}

function money(value) {
  return value === null || value === undefined ? "n/a" : "$" + fmt(value, 5);
}

function pct(value, digits) {
  return value === null || value === undefined ? "n/a" : fmt(value * 100, digits, "%");
}

function series(records, key) {
  const xs = [], ys = [];
  for (const r of records) {
    if (typeof r[key] === "number") { xs.push(r.step); ys.push(r[key]); }
  }
  return [xs, ys];
}

function merged(a, b) {
  // uPlot wants one x array: align train (a) and eval (b) series on their steps.
  const steps = [...new Set([...a[0], ...b[0]])].sort((x, y) => x - y);
  const pick = (s) => { const m = new Map(s[0].map((x, i) => [x, s[1][i]])); return steps.map((x) => m.has(x) ? m.get(x) : null); };
  return [steps, pick(a), pick(b)];
}

function qualityMetric(run) {
  const names = new Set();
  for (const e of run.eval) for (const k of Object.keys(e)) {
    if (typeof e[k] === "number" && !["step", "epoch", "wall_seconds", "loss", "majority_class_accuracy"].includes(k)) names.add(k);
  }
  return ["accuracy", "f1", "perplexity"].find((n) => names.has(n)) || [...names][0] || "loss";
}

function chartData(run) {
  const metric = qualityMetric(run);
  const dollars = series(run.train, "dollars");
  const budget = run.budget_usd ? dollars[0].map(() => run.budget_usd) : dollars[0].map(() => null);
  return {
    loss: merged(series(run.train, "loss"), series(run.eval, "loss")),
    metric: series(run.eval, metric),
    speed: series(run.train, "samples_per_second"),
    dollars: [dollars[0], dollars[1], budget],
    metricName: metric,
  };
}

function makeChart(el, title, labels, colors, data) {
  const opts = {
    title, width: CHART.width, height: CHART.height, legend: { show: labels.length > 1 },
    scales: { x: { time: false } },
    series: [{ label: "step" }].concat(labels.map((label, i) => ({ label, stroke: colors[i], width: 1.5, spanGaps: true, points: { show: true, size: 3 } }))),
  };
  return new uPlot(opts, data, el);
}

function statsHtml(run) {
  const last = run.train.length ? run.train[run.train.length - 1] : {};
  const mem = run.peak_memory_bytes ? fmt(run.peak_memory_bytes / 1e6, 0, " MB") : (last.peak_rss_bytes ? fmt(last.peak_rss_bytes / 1e6, 0, " MB RSS") : "n/a");
  const lastEval = run.eval.length ? run.eval[run.eval.length - 1] : {};
  const metric = qualityMetric(run);
  const cells = [
    ["step", `${run.step} / ${run.total_steps || "?"}`],
    ["loss", fmt(last.loss, 4)],
    [`eval ${metric}`, fmt(lastEval[metric], 4)],
    ["samples/s", fmt(run.samples_per_second, 1)],
    ["spent", money(run.dollars) + (run.budget_usd ? ` of $${run.budget_usd}` : "")],
    ["projected total", money(run.projected_dollars)],
    ["data wait", pct(run.data_wait_fraction, 1)],
    ["CPU utilization", pct(run.cpu_utilization, 0)],
    ["memory", mem],
    ["price", "$" + fmt(run.price_per_hour, 4) + "/h"],
    ["last update", run.seconds_since_update === null ? "n/a" : fmt(run.seconds_since_update, 0, " s ago")],
  ];
  return cells.map(([k, v]) => `<div data-field="${k}"><b>${k}</b><span class="value">${v}</span></div>`).join("");
}

function createCard(run) {
  const card = document.createElement("section");
  card.className = "run";
  card.dataset.run = run.name;
  card.innerHTML = `<h2><span class="name"></span><span class="status"></span></h2><div class="stats"></div><div class="charts"></div>`;
  card.querySelector(".name").textContent = run.name;
  document.getElementById("runs").appendChild(card);
  return { el: card, charts: makeCharts(card, chartData(run)) };
}

function makeCharts(card, data) {
  const box = card.querySelector(".charts");
  box.innerHTML = "";
  const slot = () => { const d = document.createElement("div"); box.appendChild(d); return d; };
  return {
    loss: makeChart(slot(), "loss", ["train", "eval"], ["#1f77b4", "#ff7f0e"], data.loss),
    metric: makeChart(slot(), "eval " + data.metricName, [data.metricName], ["#2ca02c"], data.metric),
    speed: makeChart(slot(), "samples/s", ["samples/s"], ["#9467bd"], data.speed),
    dollars: makeChart(slot(), "dollars vs budget", ["spent", "budget"], ["#d62728", "#000"], data.dollars),
    metricName: data.metricName,
  };
}

function update(run) {
  let card = state.cards[run.name];
  if (!card) {
    card = state.cards[run.name] = createCard(run);
  } else {
    const data = chartData(run);
    if (data.metricName !== card.charts.metricName) {
      // The first evaluation named the quality metric: redraw with its title.
      for (const key of ["loss", "metric", "speed", "dollars"]) card.charts[key].destroy();
      card.charts = makeCharts(card.el, data);
    } else {
      for (const key of ["loss", "metric", "speed", "dollars"]) card.charts[key].setData(data[key]);
    }
  }
  const status = card.el.querySelector(".status");
  status.textContent = run.status;
  status.className = "status " + run.status;
  card.el.querySelector(".stats").innerHTML = statsHtml(run);
  card.run = run;
}

async function poll() {
  try {
    const response = await fetch("/api/runs", { cache: "no-store" });
    const body = await response.json();
    document.getElementById("root").textContent = body.root;
    if (body.runs.length) {
      const empty = document.querySelector("#runs > .empty");
      if (empty) empty.remove();
    }
    body.runs.forEach(update);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById("updated").textContent = "cannot reach the dashboard server: " + err;
  }
  setTimeout(poll, POLL_MS);
}
poll();
