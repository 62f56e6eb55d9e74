"""The /dashboard page: one self-contained HTML document (inline CSS and JS, nothing fetched from elsewhere)
that polls /dashboard/data every second and shows live rates, error rates and latency percentiles.

Live numbers are over the last 10 seconds of polls: requests/s and the 5xx share from counter differences,
p50/p99 from the difference of two latency histograms (interpolated inside a bucket, as PromQL's
histogram_quantile does). A row with no traffic in that window shows its numbers since start, greyed.
"""

from __future__ import annotations

DASHBOARD_HTML = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>frontgate dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  :root { --fg: #1d2330; --muted: #6b7385; --line: #e3e6ee; --ok: #1a7f37; --bad: #c62828; --warn: #b26a00; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
         background: #f6f7fb; }
  header { display: flex; align-items: baseline; gap: 24px; padding: 14px 24px; background: #1d2330; color: #fff; }
  header h1 { font-size: 18px; margin: 0; }
  header span { color: #c9cfdd; }
  main { padding: 16px 24px; display: grid; gap: 16px; grid-template-columns: 1fr 1fr; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 14px; margin: 0 0 8px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
  table { width: 100%; border-collapse: collapse; }
  th, td { text-align: right; padding: 4px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
  th:first-child, td:first-child { text-align: left; }
  th { color: var(--muted); font-weight: 600; }
  td.stale { color: #a3a9b8; }
  .ok { color: var(--ok); font-weight: 600; } .bad { color: var(--bad); font-weight: 600; }
  .warn { color: var(--warn); font-weight: 600; }
  .big { font-size: 28px; font-weight: 700; }
  .tiles { display: flex; gap: 32px; }
  .tiles div span { display: block; color: var(--muted); font-size: 12px; }
  footer { padding: 0 24px 16px; color: var(--muted); font-size: 12px; }
</style>
</head>
<body>
<header><h1>frontgate</h1><span id="meta">connecting&hellip;</span></header>
<main>
  <section class="wide"><div class="tiles">
    <div><span>requests/s</span><b class="big" id="total-rps">&ndash;</b></div>
    <div><span>5xx rate</span><b class="big" id="total-errors">&ndash;</b></div>
    <div><span>requests in flight</span><b class="big" id="in-flight">&ndash;</b></div>
    <div><span>connections</span><b class="big" id="connections">&ndash;</b></div>
    <div><span>requests since start</span><b class="big" id="total-requests">&ndash;</b></div>
  </div></section>
  <section class="wide"><h2>Routes</h2><table id="routes"><thead><tr><th>route</th><th>req/s</th><th>5xx rate</th>
    <th>p50</th><th>p99</th><th>requests</th><th>5xx</th></tr></thead><tbody></tbody></table></section>
  <section class="wide"><h2>Upstreams</h2><table id="upstreams"><thead><tr><th>upstream</th><th>tries/s</th>
    <th>error rate</th><th>p50</th><th>p99</th><th>tries</th><th>errors</th><th>retries</th><th>in flight</th>
    <th>breaker</th></tr></thead><tbody></tbody></table></section>
  <section><h2>Targets</h2><table id="targets"><thead><tr><th>target</th><th>upstream</th><th>health</th>
    <th>breaker</th><th>in flight</th></tr></thead><tbody></tbody></table></section>
  <section><h2>Rate limits</h2><table id="limits"><thead><tr><th>limit</th><th>rejected/s</th><th>rejected</th>
    <th>admitted</th><th>store errors</th></tr></thead><tbody></tbody></table>
    <h2 style="margin-top:12px">Auth failures</h2><table id="auth"><thead><tr><th>plugin:reason</th>
    <th>count</th></tr></thead><tbody></tbody></table></section>
</main>
<footer>Live columns cover the last 10 s; grey numbers are since start (no traffic in the window).
  Data: <a href="dashboard/data">dashboard/data</a>, <a href="metrics">metrics</a>.</footer>
<script>
"use strict";
const WINDOW = 10, HISTORY = 60;
let history = [];

function quantile(bounds, counts, q) {
  let total = 0;
  for (let i = 0; i <= bounds.length; i++) total += counts[i];
  if (total <= 0) return null;
  const rank = q * total;
  let running = 0, lower = 0;
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i] > 0 && running + counts[i] >= rank) return lower + (bounds[i] - lower) * (rank - running) / counts[i];
    running += counts[i]; lower = bounds[i];
  }
  return bounds[bounds.length - 1];
}
function diff(a, b) { return a.map((v, i) => v - (b ? b[i] : 0)); }
function ms(seconds) {
  if (seconds === null) return "\\u2013";
  const v = seconds * 1000;
  return v < 10 ? v.toFixed(2) + " ms" : v < 1000 ? v.toFixed(1) + " ms" : (v / 1000).toFixed(2) + " s";
}
function pct(part, whole) { return whole > 0 ? (100 * part / whole).toFixed(1) + "%" : "\\u2013"; }
function cell(text, field, cls) {
  const td = document.createElement("td");
  td.textContent = text; td.dataset.field = field;
  if (cls) td.className = cls;
  return td;
}
function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows);
}
function stats(current, old, bounds, dt) {
  const requests = current.requests - (old ? old.requests : 0);
  const errors = current.errors - (old ? old.errors : 0);
  const live = old && requests > 0;
  const hist = current.histogram ? (live ? diff(current.histogram, old.histogram) : current.histogram) : null;
  return {
    rate: old && dt > 0 ? requests / dt : 0,
    errors: live ? pct(errors, requests) : pct(current.errors, current.requests),
    p50: hist ? ms(quantile(bounds, hist, 0.5)) : "\\u2013",
    p99: hist ? ms(quantile(bounds, hist, 0.99)) : "\\u2013",
    stale: !live,
  };
}
function rowsFor(kind, now, old, dt, bounds, extra) {
  const rows = [];
  for (const [name, current] of Object.entries(now[kind])) {
    const s = stats(current, old ? old[kind][name] : null, bounds, dt);
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    const live = s.stale ? "stale" : "";
    tr.append(cell(name, "name"), cell(s.rate.toFixed(1), "rate"), cell(s.errors, "error_rate", live),
              cell(s.p50, "p50", live), cell(s.p99, "p99", live), cell(String(current.requests), "requests"),
              cell(String(current.errors), "errors"));
    if (extra) extra(tr, current);
    rows.push(tr);
  }
  return rows;
}
function render(now) {
  history.push(now);
  if (history.length > HISTORY) history.shift();
  let old = null;
  for (const sample of history) { if (sample !== now && now.now - sample.now <= WINDOW + 0.5) { old = sample; break; } }
  const dt = old ? now.now - old.now : 0;
  const sum = (d, f) => Object.values(d.routes).reduce((a, r) => a + r[f], 0);
  const total = sum(now, "requests"), errors = sum(now, "errors");
  const dTotal = old ? total - sum(old, "requests") : 0, dErrors = old ? errors - sum(old, "errors") : 0;
  document.getElementById("total-rps").textContent = old && dt > 0 ? (dTotal / dt).toFixed(1) : "\\u2013";
  document.getElementById("total-errors").textContent = dTotal > 0 ? pct(dErrors, dTotal) : pct(errors, total);
  document.getElementById("total-requests").textContent = String(total);
  document.getElementById("in-flight").textContent = String(now.in_flight);
  document.getElementById("connections").textContent = String(now.connections);
  document.getElementById("meta").textContent =
    "config generation " + now.generation + " \\u00b7 " + now.workers + " worker(s) \\u00b7 updated " +
    new Date().toLocaleTimeString();
  fill("routes", rowsFor("routes", now, old, dt, now.bounds));
  fill("upstreams", rowsFor("upstreams", now, old, dt, now.bounds, (tr, u) => {
    tr.append(cell(String(u.retries), "retries"), cell(String(u.in_flight), "in_flight"),
              cell(u.breaker, "breaker", u.breaker === "closed" ? "ok" : "bad"));
  }));
  fill("targets", now.targets.map(t => {
    const tr = document.createElement("tr");
    tr.dataset.name = t.target;
    const health = !t.healthy ? "unhealthy" : t.ejected ? "ejected" : "healthy";
    tr.append(cell(t.target, "name"), cell(t.upstream, "upstream"),
              cell(health, "health", health === "healthy" ? "ok" : "bad"),
              cell(t.breaker, "breaker", t.breaker === "closed" ? "ok" : t.breaker === "open" ? "bad" : "warn"),
              cell(String(t.in_flight), "in_flight"));
    return tr;
  }));
  fill("limits", Object.entries(now.rate_limits).map(([name, l]) => {
    const before = old && old.rate_limits[name] ? old.rate_limits[name].limited : 0;
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    tr.append(cell(name, "name"), cell(old && dt > 0 ? ((l.limited - before) / dt).toFixed(1) : "\\u2013", "rate"),
              cell(String(l.limited), "limited", l.limited > 0 ? "warn" : ""), cell(String(l.admitted), "admitted"),
              cell(String(l.store_error), "store_error"));
    return tr;
  }));
  fill("auth", Object.entries(now.auth_failures).map(([name, count]) => {
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    tr.append(cell(name, "name"), cell(String(count), "count"));
    return tr;
  }));
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}
async function poll() {
  try {
    const response = await fetch("dashboard/data", {cache: "no-store"});
    if (response.ok) render(await response.json());
  } catch (error) {
    document.getElementById("meta").textContent = "cannot reach the gateway: " + error;
  }
  setTimeout(poll, 1000);
}
poll();
</script>
</body>
</html>
"""
