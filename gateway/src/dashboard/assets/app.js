// Quiver's dashboard: polls the state document and draws it. No
// libraries; the charts are SVG paths built here.
"use strict";

const API = "/dashboard/api/v1/state";
const POLL_MS = 2000;
const COLORS = ["#1f5fbf", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285", "#5c940d", "#e67700"];
const CHARTS = [
  ["rps", "requests/s", 2],
  ["errors_ps", "errors/s", 2],
  ["p50_ms", "p50 latency (ms)", 3],
  ["p99_ms", "p99 latency (ms)", 3],
  ["batch_mean", "mean batch size", 1],
  ["queue_depth", "queue depth", 0],
];
// Chart samples kept between polls (model → version → columns): after the
// first answer, each poll asks only for samples newer than the last one.
const KEYS = ["t_ms", "rps", "errors_ps", "p50_ms", "p99_ms", "batch_mean", "queue_depth"];
const store = {};
let lastSample = null;

function merge(doc) {
  const oldest = doc.now_ms - doc.window_ms;
  for (const m of doc.models) {
    const kept = store[m.name] || (store[m.name] = {});
    const live = new Set(m.versions.map(v => String(v.version)));
    for (const name of Object.keys(kept)) if (!live.has(name)) delete kept[name];
    for (const v of m.versions) {
      const have = kept[v.version] || (kept[v.version] = Object.fromEntries(KEYS.map(k => [k, []])));
      const newest = have.t_ms.length ? have.t_ms[have.t_ms.length - 1] : -Infinity;
      v.series.t_ms.forEach((t, i) => {
        if (t > newest) KEYS.forEach(k => have[k].push(v.series[k][i]));
      });
      let cut = 0;
      while (cut < have.t_ms.length && have.t_ms[cut] <= oldest) cut++;
      if (cut) KEYS.forEach(k => have[k].splice(0, cut));
      v.series = have;
      if (have.t_ms.length) lastSample = Math.max(lastSample ?? 0, have.t_ms[have.t_ms.length - 1]);
    }
  }
  for (const name of Object.keys(store)) if (!doc.models.some(m => m.name === name)) delete store[name];
}

// The run selected per model, shown beside its parent.
const selected = {};
let first = true;

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function num(v, digits) {
  if (v === null || v === undefined) return "–";
  return Number.isInteger(v) && digits > 2 ? String(v) : Number(v).toFixed(digits);
}
function pct(v) {
  return v === null || v === undefined ? "–" : (100 * v).toFixed(2) + " %";
}
function metrics(m) {
  if (!m || Object.keys(m).length === 0) return '<span class="muted">none</span>';
  return Object.entries(m).map(([k, v]) => `${esc(k)} ${num(v, 4)}`).join(", ");
}
// The smallest of 1, 2, 5 × 10^n above `max` (1 for an empty chart).
function nice(max) {
  if (!(max > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(max)));
  return [1, 2, 5, 10].map(f => f * p).find(x => x >= max * 1.05) || 10 * p;
}
function span(ms) {
  const s = Math.round(ms / 1000);
  return s < 120 ? `-${s} s` : `-${Math.round(s / 60)} min`;
}
function color(i) {
  return COLORS[i % COLORS.length];
}

function chart(model, key, title, digits, start, end) {
  const W = 300, H = 120, L = 34, B = 14, T = 6;
  let max = 0;
  const lines = [];
  model.versions.forEach((v, i) => {
    const s = v.series;
    const pts = [];
    s.t_ms.forEach((t, j) => {
      const y = s[key][j];
      if (y !== null && y !== undefined) { pts.push([t, y]); max = Math.max(max, y); }
    });
    if (pts.length) lines.push({version: v.version, color: color(i), pts});
  });
  const top = nice(max);
  const x = t => L + (W - L - 2) * (t - start) / Math.max(1, end - start);
  const y = val => T + (H - T - B) * (1 - val / top);
  let svg = `<svg class="chart" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" data-key="${key}">`;
  for (const f of [0, 0.5, 1]) {
    const gy = y(top * f);
    svg += `<line class="grid" x1="${L}" x2="${W}" y1="${gy}" y2="${gy}"/><text x="2" y="${gy + 3}">${num(top * f, digits)}</text>`;
  }
  svg += `<text x="${L}" y="${H - 2}">${span(end - start)}</text><text x="${W - 24}" y="${H - 2}">now</text>`;
  for (const l of lines) {
    const d = l.pts.map(([t, v], j) => `${j ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join("");
    svg += `<path class="series" d="${d}" stroke="${l.color}" data-version="${l.version}" data-points="${l.pts.length}"/>`;
  }
  svg += "</svg>";
  const last = lines.map(l => `v${l.version} ${num(l.pts[l.pts.length - 1][1], digits)}`).join(" · ");
  return `<figure><figcaption><span>${esc(title)}</span><span>${esc(last)}</span></figcaption>${svg}</figure>`;
}

function versionsTable(model) {
  let rows = "";
  for (const v of model.versions) {
    const lin = v.manifest && v.manifest.lineage;
    const lineage = lin
      ? `parent ${esc(lin.parent ?? "–")}, ${esc(lin.rows)} rows${lin.seed !== undefined && lin.seed !== null ? ", seed " + esc(lin.seed) : ""}` +
        Object.entries(lin.data || {}).map(([k, r]) => `<br><span class="muted">${esc(k)}: ${esc(r)}</span>`).join("")
      : '<span class="muted">no lineage</span>';
    const offline = v.manifest ? metrics((v.manifest.metrics || {}).offline) : '<span class="muted">no manifest</span>';
    const role = v.role === "canary" ? `canary ${pct(v.weight)}` : v.role === "rolled_back" ? "rolled back" : v.role;
    const shadow = v.shadow ? `${pct(v.shadow.agreement)} of ${v.shadow.agree + v.shadow.disagree}` : '<span class="muted">not available</span>';
    const run = v.run ? `<a data-run="${esc(v.run)}" data-model="${esc(model.name)}">${esc(v.run)}</a>` : '<span class="muted">–</span>';
    rows += `<tr class="version role-${esc(v.role)}" data-version="${v.version}" data-role="${esc(v.role)}">
      <td>v${v.version}</td>
      <td><span class="pill state-${esc(v.state)}">${esc(v.state)}</span>${v.reason ? `<br><span class="problem">${esc(v.reason)}</span>` : ""}</td>
      <td class="role">${esc(role)}</td>
      <td class="num">${esc(v.requests ?? "–")}</td><td class="num">${esc(v.errors ?? "–")}</td>
      <td>${shadow}</td><td>${lineage}</td><td>${offline}</td><td>${run}</td></tr>`;
  }
  return `<table class="versions"><thead><tr><th>version</th><th>state</th><th>role</th><th>requests</th><th>errors</th>
    <th>shadow agreement</th><th>lineage</th><th>offline metrics</th><th>run</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function rollout(model) {
  const r = model.rollout;
  const run = r.running;
  const steps = (model.routing.steps && model.routing.steps.length ? model.routing.steps : r.steps) || [];
  let html = `<p>Automatic rollouts ${r.enabled ? "on" : "off"}; steps ${steps.map(pct).join(" → ") || "–"}.</p>`;
  if (!run) {
    const canaries = model.routing.canary;
    if (canaries.length) {
      html += `<p class="rollout-running">Canary ${canaries.map(c => `v${c.version} at ${pct(c.weight)}`).join(", ")} (set by ${esc(model.routing.updated_by)}; not followed by the guardrail).</p>`;
    } else {
      html += '<p class="muted">No rollout in progress.</p>';
    }
    return html;
  }
  const weight = (model.routing.canary.find(c => c.version === run.canary) || {}).weight;
  html += `<p class="rollout-running">Canary <b>v${run.canary}</b> against stable v${esc(run.stable ?? "–")}: step ${run.step + 1} of ${steps.length || "?"}, weight <b>${pct(weight)}</b>.</p>`;
  const g = r.guardrail;
  if (!g) {
    html += '<p class="muted">The guardrail has not compared the arms on this replica (it runs on the fleet\'s leader, once the canary has traffic).</p>';
    return html;
  }
  const arm = (name, a, note) => `<tr><td>${name}</td><td class="num">${a.requests}</td><td class="num">${a.errors}</td>
    <td class="num">${pct(a.error_rate)}</td><td class="num">${num(a.p99_ms, 3)}</td><td>${note}</td></tr>`;
  const held = g.baseline
    ? `The canary is held to ${g.baseline.requests} stable requests: error rate ≤ ${pct(g.max_error_rate)}, p99 ≤ ${g.max_p99_ms === null ? "–" : num(g.max_p99_ms, 3) + " ms"}.`
    : `Stable has not had ${g.min_requests} requests yet, so it counts as error-free (canary error rate ≤ ${pct(g.max_error_rate)}) and latency is not compared.`;
  html += `<table class="guardrail"><thead><tr><th>arm, this step (${g.replicas} replica(s))</th><th>requests</th><th>errors</th><th>error rate</th><th>p99 ms</th><th></th></tr></thead><tbody>
    ${arm("canary v" + g.canary, g.canary_arm, `${g.canary_arm.requests} of ${g.min_requests} requests needed for a verdict`)}
    ${arm("stable v" + (g.stable ?? "–"), g.stable_arm, "")}</tbody></table>
    <p>Dwell ${num(g.dwell_ms / 1000, 1)} s (at least ${num(g.min_dwell_ms / 1000, 1)} s per step). ${esc(held)}
    Last verdict: <b>${esc(g.decision)}</b>${g.reason ? " – " + esc(g.reason) : ""}.</p>`;
  return html;
}

function history(model) {
  if (!model.history.length) return '<p class="muted">No decisions recorded.</p>';
  const rows = model.history.slice().reverse().map(h => `<tr><td>${esc(h.at)}</td><td>${esc(h.decision)}</td><td>${esc(h.by)}</td>
    <td>${esc(h.reason)}</td><td>${esc(h.stable ?? "–")}</td><td>${Object.entries(h.canary || {}).map(([v, w]) => `v${esc(v)} ${pct(w)}`).join(", ") || "–"}</td></tr>`).join("");
  return `<table class="history"><thead><tr><th>at</th><th>decision</th><th>by</th><th>why</th><th>stable</th><th>canary</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function outcome(o) {
  switch (o.kind) {
    case "published": return `published as v${o.version}`;
    case "rejected": return `rejected: ${o.reason}`;
    case "failed": return `failed: ${o.reason}`;
    default: return o.kind;
  }
}

function runCard(run, title) {
  if (!run) return `<div class="run"><h4>${esc(title)}</h4><p class="muted">No run record.</p></div>`;
  const rows = [
    ["run", run.id], ["started", run.started_at], ["trigger", run.trigger], ["outcome", outcome(run.outcome)],
    ["rollout", run.rollout ? `${run.rollout.result} (${run.rollout.by}: ${run.rollout.reason})` : "–"],
    ["parent", run.parent ? "v" + run.parent : "–"], ["data", Object.entries(run.data || {}).map(([k, v]) => `${k}: ${v}`).join("; ") || "–"],
    ["rows", `${run.rows} (${run.held_rows} held out)`], ["family", run.family], ["seed", run.seed], ["code", run.code],
    ["config sha256", run.config_sha256], ["duration", `${num(run.seconds, 2)} s` + (run.rows_per_s ? `, ${num(run.rows_per_s, 0)} rows/s` : "")],
    ["offline", Object.entries(run.offline || {}).map(([k, v]) => `${k} ${num(v, 4)}`).join(", ") || "–"],
    ["stable offline", run.stable_offline ? Object.entries(run.stable_offline).map(([k, v]) => `${k} ${num(v, 4)}`).join(", ") : "–"],
    ["parity max abs", run.parity_max_abs ?? "–"],
  ];
  return `<div class="run" data-run="${esc(run.id)}"><h4>${esc(title)}</h4><dl>${rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("")}</dl></div>`;
}

function runs(model) {
  if (!model.runs.length) return '<p class="muted">No run records in the registry.</p>';
  const pick = selected[model.name] || model.runs[model.runs.length - 1].id;
  const rows = model.runs.slice().reverse().map(r => `<tr class="run-row${r.id === pick ? " selected" : ""}" data-run="${esc(r.id)}">
    <td><a data-run="${esc(r.id)}" data-model="${esc(model.name)}">${esc(r.id)}</a></td><td>${esc(r.started_at)}</td><td>${esc(r.trigger)}</td>
    <td>${r.parent ? "v" + r.parent : "–"}</td><td class="num">${r.rows}</td><td>${esc(Object.entries(r.offline || {}).map(([k, v]) => `${k} ${num(v, 4)}`).join(", "))}</td>
    <td class="outcome">${esc(outcome(r.outcome))}</td><td>${esc(r.rollout ? r.rollout.result : "–")}</td></tr>`).join("");
  const run = model.runs.find(r => r.id === pick);
  const parent = run && run.parent
    ? model.runs.find(r => r.outcome.kind === "published" && r.outcome.version === run.parent)
    : null;
  return `<table class="runs"><thead><tr><th>run</th><th>started</th><th>trigger</th><th>parent</th><th>rows</th><th>offline</th><th>outcome</th><th>rollout</th></tr></thead>
    <tbody>${rows}</tbody></table>
    <div class="compare">${runCard(run, "run " + pick)}${runCard(parent, run && run.parent ? "its parent, v" + run.parent : "no parent version")}</div>`;
}

function quality(model, trainer) {
  const na = '<span class="muted">not available</span>';
  const online = o => {
    if (!o) return na;
    const parts = [["accuracy", o.accuracy], ["log loss", o.log_loss], ["MAE", o.mae], ["RMSE", o.rmse]]
      .filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => `${k} ${num(v, 4)}`);
    if (o.labelled_rows) parts.push(`<span class="muted">over ${num(o.labelled_rows, 0)} labels</span>`);
    return parts.join(", ") || na;
  };
  const drift = o => {
    if (!o) return na;
    const psi = Object.values(o.feature_psi || {});
    const parts = [];
    if (psi.length) parts.push(`features max ${num(Math.max(...psi), 3)}`);
    if (o.prediction_psi !== null && o.prediction_psi !== undefined) parts.push(`prediction ${num(o.prediction_psi, 3)}`);
    return parts.join(", ") || na;
  };
  const rows = model.versions.filter(v => v.state === "ready").map(v => `<tr class="quality-row" data-version="${v.version}"><td>v${v.version}</td>
    <td>${metrics(v.manifest && (v.manifest.metrics || {}).offline)}</td>
    <td>${v.shadow ? pct(v.shadow.agreement) : na}</td>
    <td class="online">${online(v.online)}</td><td class="drift">${drift(v.online)}</td></tr>`).join("");
  const note = !trainer.configured
    ? "Online quality and drift come from the trainer: set <code>[dashboard] trainer_metrics_url</code> to its metrics endpoint."
    : trainer.error ? `<span class="problem">${esc(trainer.error)}</span>`
    : "Online quality and drift (PSI against the training window) as the trainer measures them; its verdicts are in the decision history.";
  return `<table class="quality"><thead><tr><th>version</th><th>offline (manifest)</th><th>shadow agreement</th><th>online quality</th><th>drift (PSI)</th></tr></thead><tbody>${rows}</tbody></table>
    <p class="muted">${note}</p>`;
}

// Charts span the window, or less while the gateway is younger than it.
function chartStart(model, doc) {
  const firsts = model.versions.map(v => v.series.t_ms[0]).filter(t => t !== undefined);
  const oldest = firsts.length ? Math.min(...firsts) : doc.now_ms - 60000;
  return Math.max(doc.now_ms - doc.window_ms, Math.min(oldest, doc.now_ms - 60000));
}

function render(doc) {
  const end = doc.now_ms;
  const html = doc.models.map(m => `<section class="model" data-model="${esc(m.name)}">
    <h2>${esc(m.name)}${m.unloaded ? ' <span class="pill">unloaded</span>' : ""}</h2>
    ${m.problem ? `<p class="problem">${esc(m.problem)}</p>` : ""}
    ${m.registry_problems.map(p => `<p class="problem">${esc(p)}</p>`).join("")}
    <h3>Versions</h3>${versionsTable(m)}
    <h3>Rollout</h3>${rollout(m)}
    <h3>Live, last ${span(end - chartStart(m, doc)).slice(1)}</h3>
    <div class="legend">${m.versions.map((v, i) => `<span><i style="background:${color(i)}"></i>v${v.version}</span>`).join("")}</div>
    <div class="charts">${CHARTS.map(([k, t, d]) => chart(m, k, t, d, chartStart(m, doc), end)).join("")}</div>
    <h3>Quality</h3>${quality(m, doc.trainer)}
    <h3>Decision history</h3>${history(m)}
    <h3>Training runs</h3>${runs(m)}
  </section>`).join("");
  document.getElementById("models").innerHTML = html || '<p class="muted">No models in the repository.</p>';
  document.getElementById("status").textContent = `updated ${new Date(doc.now_ms).toLocaleTimeString()}${doc.loaded ? "" : " (still loading)"}`;
  if (first) {
    first = false;
    window.quiverFirstRender = performance.now();
  }
}

let last = null;
async function poll() {
  const headers = {};
  const token = sessionStorage.getItem("quiver-token");
  if (token) headers.Authorization = "Bearer " + token;
  try {
    const url = lastSample === null ? API : `${API}?since_ms=${lastSample}`;
    const r = await fetch(url, {headers, cache: "no-store"});
    if (r.status === 401 || r.status === 403) {
      document.getElementById("auth").hidden = false;
      document.getElementById("status").textContent = "this gateway protects reads: enter the admin token";
    } else if (r.ok) {
      last = await r.json();
      merge(last);
      render(last);
    } else {
      document.getElementById("status").textContent = `the gateway answered ${r.status}`;
    }
  } catch (e) {
    document.getElementById("status").textContent = "gateway unreachable; retrying";
  }
  setTimeout(poll, POLL_MS);
}

document.getElementById("auth").addEventListener("submit", e => {
  e.preventDefault();
  sessionStorage.setItem("quiver-token", document.getElementById("token").value);
  document.getElementById("auth").hidden = true;
});
document.getElementById("models").addEventListener("click", e => {
  const a = e.target.closest("[data-run]");
  const section = e.target.closest("section.model");
  if (!a || !section) return;
  selected[section.dataset.model] = a.dataset.run;
  if (last) render(last);
  const row = section.querySelector(`.compare`);
  if (row && e.target.tagName === "A") row.scrollIntoView({block: "nearest"});
});
poll();
