// dptrain dashboard: polls the coordinator's JSON API once a second and draws uPlot charts.
// The API's JSON is the gRPC messages' proto3 JSON mapping (int64 values arrive as strings).
"use strict";

const POLL_MS = 1000;
const COLORS = ["#1a6fd8", "#d8571a", "#1f8a3b", "#8e44ad", "#c0392b", "#16a2b8", "#7f8c1d", "#555"];
const token = (() => {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) sessionStorage.setItem("dptrain-token", decodeURIComponent(m[1]));
  return sessionStorage.getItem("dptrain-token");
})();

const jobs = new Map();      // id -> Job
const series = new Map();    // id -> {step, loss, acc, val_loss, val_acc, lr, gnorm, workers, failures, next}
const overlay = new Set();   // ticked jobs
let detail = null;           // the clicked job
const charts = {};

async function api(path) {
  const r = await fetch(path, {headers: token ? {Authorization: `Bearer ${token}`} : {}});
  const body = await r.json();
  if (!r.ok) throw new Error(`${r.status} ${body.code || ""}: ${body.error || r.statusText}`);
  return body;
}

const num = v => (v === undefined || v === null ? null : Number(v));
const fmt = (v, d = 4) => (v === null || v === undefined ? "" : Number(v).toFixed(d));
const stateOf = j => (j.state || "JOB_STATE_UNSPECIFIED").replace("JOB_STATE_", "");
const time = t => (t ? new Date(t) : null);

function duration(j) {
  const a = time(j.started), b = time(j.finished) || (stateOf(j) === "RUNNING" ? new Date() : null);
  if (!a || !b) return "";
  const s = Math.max(0, Math.round((b - a) / 1000));
  return s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${Math.floor(s / 3600)}h ${Math.floor(s / 60) % 60}m`;
}

function modelSummary(spec) {
  const m = (spec && spec.model) || {};
  const ops = (m.nodes || []).map(n => n.op);
  const counts = {};
  for (const op of ops) counts[op] = (counts[op] || 0) + 1;
  const main = Object.entries(counts).filter(([op]) => !["relu", "gelu", "tanh", "add", "dropout", "flatten"].includes(op))
    .map(([op, c]) => (c > 1 ? `${c}×${op}` : op));
  return main.slice(0, 4).join(", ") + (main.length > 4 ? ", …" : "");
}

const rows = new Map();  // id -> its <tr>, made once and updated in place (clicks and ticks survive polls)
const COLUMNS = ["tick", "id", "name", "state", "progress", "model", "data", "started", "duration",
                 "loss", "val_loss", "val_acc", "test_acc"];

function rowFor(j) {
  if (rows.has(j.id)) return rows.get(j.id);
  const tr = document.createElement("tr");
  tr.dataset.job = j.id;
  const cells = Object.fromEntries(COLUMNS.map(c => [c, tr.insertCell()]));
  const box = document.createElement("input");
  box.type = "checkbox";
  box.addEventListener("click", e => {
    e.stopPropagation();
    box.checked ? overlay.add(j.id) : overlay.delete(j.id);
    drawCharts();
  });
  cells.tick.append(box);
  for (const c of ["loss", "val_loss", "val_acc", "test_acc"]) cells[c].className = "num";
  cells.progress.innerHTML = '<span class="bar"><span></span></span> <span class="steps"></span>';
  tr.addEventListener("click", () => { detail = j.id; renderJobs(); loadDetail(); drawCharts(); });
  tr.cells_ = cells;
  rows.set(j.id, tr);
  return tr;
}

function renderJobs() {
  const body = document.querySelector("#jobs tbody");
  const order = [...jobs.values()].map(rowFor);
  order.forEach((tr, i) => { if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null); });
  while (body.children.length > order.length) body.lastChild.remove();
  for (const j of jobs.values()) {
    const tr = rows.get(j.id), c = tr.cells_, state = stateOf(j), m = j.latest_metrics || {};
    tr.classList.toggle("selected", j.id === detail);
    c.id.textContent = j.id.slice(0, 12) + "…";
    c.id.title = j.id;
    c.name.textContent = j.name || "";
    c.state.textContent = state;
    c.state.className = `state ${state}`;
    const pct = num(j.total_steps) ? 100 * num(j.step || 0) / num(j.total_steps) : 0;
    c.progress.querySelector(".bar > span").style.width = `${pct.toFixed(1)}%`;
    c.progress.querySelector(".steps").textContent = `${num(j.step || 0)}/${num(j.total_steps || 0)}`;
    c.model.textContent = modelSummary(j.spec);
    c.data.textContent = (j.spec && j.spec.dataset && j.spec.dataset.name) || "";
    c.started.textContent = j.started ? time(j.started).toLocaleString() : "";
    c.duration.textContent = duration(j);
    c.loss.textContent = fmt(m.loss);
    c.val_loss.textContent = fmt(m.val_loss);
    c.val_acc.textContent = fmt(m.val_accuracy, 3);
    c.test_acc.textContent = fmt(m.test_accuracy, 3);
  }
}

function cell(tr, text) {
  const td = tr.insertCell();
  td.textContent = text;
  return td;
}

function renderGroups() {  // sweep trials are named "<group>/<k>": a group ticks all of its jobs
  const select = document.getElementById("group");
  const groups = [...new Set([...jobs.values()].map(j => (j.name || "").split("/")).filter(p => p.length > 1)
    .map(p => p.slice(0, -1).join("/")))].sort();
  const have = [...select.options].map(o => o.value).slice(1);
  if (have.join("\n") === groups.join("\n")) return;
  const chosen = select.value;
  select.replaceChildren(Object.assign(document.createElement("option"), {value: "", textContent: "—"}),
    ...groups.map(g => Object.assign(document.createElement("option"), {value: g, textContent: g})));
  select.value = groups.includes(chosen) ? chosen : "";
}

document.getElementById("group").addEventListener("change", e => {
  const g = e.target.value;
  overlay.clear();
  for (const j of jobs.values()) if (g && (j.name || "").startsWith(`${g}/`)) overlay.add(j.id);
  for (const [id, tr] of rows) tr.cells_.tick.firstChild.checked = overlay.has(id);
  drawCharts();
});

function shown() {  // the jobs whose curves are drawn: the ticked ones, else the clicked one, else the
  // running ones, else the newest
  if (overlay.size) return [...overlay].filter(id => jobs.has(id));
  if (detail) return [detail];
  const running = [...jobs.values()].filter(j => stateOf(j) === "RUNNING").map(j => j.id);
  return running.length ? running : [...jobs.keys()].slice(0, 1);
}

async function loadMetrics(id) {
  const s = series.get(id) || {step: [], loss: [], acc: [], val_loss: [], val_acc: [], lr: [], gnorm: [],
                                workers: {}, stragglers: [], failures: [], next: 0};
  series.set(id, s);
  for (;;) {
    const page = await api(`/api/jobs/${id}/metrics?from_step=${s.next}`);
    for (const m of page.metrics || []) {
      const step = num(m.step);
      if (s.step.length && step <= s.step[s.step.length - 1]) continue;
      s.step.push(step);
      s.loss.push(num(m.loss));
      s.acc.push(num(m.accuracy));
      s.val_loss.push(num(m.val_loss));
      s.val_acc.push(num(m.val_accuracy));
      s.lr.push(num(m.lr));
      s.gnorm.push(num(m.grad_norm));
      for (const w of m.workers || []) {
        (s.workers[w.worker || 0] ||= []).push([step, num(w.compute_s)]);
        if (w.straggler) s.stragglers.push(step);
      }
      if (num(m.failures)) s.failures.push(step);
      s.next = step + 1;
    }
    if (!page.next_step) break;
    s.next = num(page.next_step);
  }
}

function aligned(ids, key) {  // uPlot data: the union of steps, then one column per job (null where absent)
  const steps = [...new Set(ids.flatMap(id => series.get(id)?.step || []))].sort((a, b) => a - b);
  const cols = ids.map(id => {
    const s = series.get(id), at = new Map();
    if (s) s.step.forEach((st, i) => at.set(st, s[key][i]));
    return steps.map(st => (at.has(st) ? at.get(st) : null));
  });
  return [steps, ...cols];
}

function markers(steps, color) {  // a uPlot hook drawing a vertical line at each of `steps`
  return u => {
    const {ctx, bbox} = u;
    ctx.save();
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    for (const st of steps) {
      const x = u.valToPos(st, "x", true);
      ctx.beginPath(); ctx.moveTo(x, bbox.top); ctx.lineTo(x, bbox.top + bbox.height); ctx.stroke();
    }
    ctx.restore();
  };
}

function chart(id, title, data, seriesOpts, hooks = {}) {
  const el = document.getElementById(id);
  const width = Math.max(400, el.clientWidth - 10);
  const opts = {title, width, height: 240, scales: {x: {time: false}}, series: [{label: "step"}, ...seriesOpts],
                axes: [{label: "step"}, {}], hooks: {draw: hooks.draw ? [hooks.draw] : []}};
  charts[id]?.destroy();
  el.replaceChildren();
  charts[id] = new uPlot(opts, data, el);
}

function drawCharts() {
  const ids = shown();
  document.getElementById("chart-jobs").textContent = ids.map(id => jobs.get(id)?.name || id.slice(0, 8)).join(" vs ");
  if (!ids.length) return;
  const name = (id, what) => `${jobs.get(id)?.name || id.slice(0, 8)} ${what}`;
  const line = (id, i, what, dash) => ({label: name(id, what), stroke: COLORS[i % COLORS.length], width: 1.5,
                                        dash: dash ? [6, 4] : undefined, spanGaps: !!dash,
                                        points: {show: !!dash, size: 5}});
  const pair = (a, b, what) => {
    const da = aligned(ids, a), db = aligned(ids, b);
    return [[da[0], ...da.slice(1), ...db.slice(1)],
            [...ids.map((id, i) => line(id, i, `train ${what}`)), ...ids.map((id, i) => line(id, i, `val ${what}`, true))]];
  };
  const fails = ids.flatMap(id => series.get(id)?.failures || []);
  const [lossData, lossSeries] = pair("loss", "val_loss", "loss");
  chart("chart-loss", "loss (red lines: worker failures recovered)", lossData, lossSeries, {draw: markers(fails, "#c0392b88")});
  const [accData, accSeries] = pair("acc", "val_acc", "accuracy");
  chart("chart-acc", "accuracy", accData, accSeries);
  chart("chart-lr", "learning rate", aligned(ids, "lr"), ids.map((id, i) => line(id, i, "lr")));
  chart("chart-gnorm", "gradient norm (before clipping)", aligned(ids, "gnorm"), ids.map((id, i) => line(id, i, "grad norm")));
  const s = series.get(ids[0]);
  if (s) {  // per-worker compute time of the first shown job; stragglers (> 2x the median) marked
    const workers = Object.keys(s.workers).sort((a, b) => a - b);
    const at = workers.map(w => new Map(s.workers[w]));
    chart("chart-workers", `${name(ids[0], "")}: compute seconds per worker (orange: stragglers, red: failures)`,
          [s.step, ...at.map(m => s.step.map(st => (m.has(st) ? m.get(st) : null)))],
          workers.map((w, i) => ({label: `worker ${w}`, stroke: COLORS[i % COLORS.length], width: 1})),
          {draw: u => { markers(s.stragglers, "#e67e2255")(u); markers(s.failures, "#c0392b88")(u); }});
  }
}

async function loadDetail() {
  if (!detail) return;
  const j = await api(`/api/jobs/${detail}`);
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-id").textContent = `${j.name || ""} (${j.id})`;
  document.getElementById("spec").textContent = JSON.stringify(j.spec, null, 2);
  const log = await api(`/api/jobs/${detail}/log`);
  const events = (log.lines || []).map(l => `${time(l.time).toLocaleTimeString()}  ${l.message}`);
  const ul = document.getElementById("events");
  ul.replaceChildren(...events.map(e => Object.assign(document.createElement("li"), {textContent: e})));
  const ledger = document.getElementById("ledger");
  ledger.replaceChildren();
  const head = ledger.createTHead().insertRow();
  for (const h of ["epoch", "used once", "duplicated", "unused", "complete"]) head.append(Object.assign(document.createElement("th"), {textContent: h}));
  for (const e of (j.stats && j.stats.epochs) || []) {
    const tr = ledger.insertRow();
    for (const v of [num(e.epoch || 0), num(e.used_once || 0), num(e.duplicated || 0), num(e.unused || 0), e.complete ? "yes" : "no"]) cell(tr, String(v));
  }
}

async function poll() {
  try {
    const list = await api("/api/jobs");
    jobs.clear();  // newest first (ids begin with their creation time)
    for (const j of (list.jobs || []).sort((a, b) => (a.id < b.id ? 1 : -1))) jobs.set(j.id, j);
    renderJobs();
    renderGroups();
    for (const id of shown()) await loadMetrics(id);
    drawCharts();
    if (detail && stateOf(jobs.get(detail) || {}) === "RUNNING") await loadDetail();
    document.getElementById("status").textContent = `${jobs.size} jobs · updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    document.getElementById("status").textContent = `error: ${e.message}`;
  }
  setTimeout(poll, POLL_MS);
}

// For tests and the curious: what the page has loaded.
window.dptrainDashboard = {points: id => (series.get(id)?.step.length || 0), shown, jobs};
poll();
