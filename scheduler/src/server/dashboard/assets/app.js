// The Shoal dashboard: renders the head's overview (pushed once a second
// over server-sent events) and queries the task API for the filter form.
// No framework: a few tables and one SVG, all text escaped.
"use strict";

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const shortNode = (id) => (id ? String(id).slice(0, 8) : "");
const bytes = (n) => {
  if (n == null) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
};
const dur = (us) => {
  if (us == null) return "";
  if (us < 1000) return us.toFixed(0) + " µs";
  if (us < 1e6) return (us / 1000).toFixed(1) + " ms";
  return (us / 1e6).toFixed(2) + " s";
};
const ago = (us, now) => (us ? dur(Math.max(0, now - us)) + " ago" : "");
const time = (us) => (us ? new Date(us / 1000).toLocaleTimeString() : "");

function table(el, head, rows, empty) {
  const th = head.map((h) => `<th class="${h.startsWith("#") ? "num" : ""}">${esc(h.replace(/^#/, ""))}</th>`).join("");
  const body = rows.length ? rows.map((r) => `<tr>${r.map((c, i) => `<td class="${head[i].startsWith("#") ? "num" : ""}">${c}</td>`).join("")}</tr>`).join("")
    : `<tr><td colspan="${head.length}" class="note">${esc(empty)}</td></tr>`;
  el.innerHTML = `<thead><tr>${th}</tr></thead><tbody>${body}</tbody>`;
}

function resources(total, avail) {
  const names = Object.keys(total || {});
  return names.map((n) => {
    const t = total[n], used = t - (avail?.[n] ?? 0);
    return `${esc(n)} <meter min="0" max="${t}" value="${used}"></meter> ${used.toFixed(1)}/${t}`;
  }).join("<br>");
}

function taskRows(tasks, now) {
  return tasks.map((t) => [
    `<span class="id">${esc(t.id)}</span>`, esc(t.job), esc(t.function),
    `<span class="state-${esc(t.phase)}">${esc(t.phase)}</span>`,
    `<span class="id">${esc(shortNode(t.node))}</span>`, esc(t.attempts), esc(dur(t.run_us)), esc(ago(t.submitted_at_us, now)),
    t.error ? `<div class="err">${esc(t.error.kind)}: ${esc(t.error.message)}${t.error.location ? " at " + esc(t.error.location) : ""}</div>` : "",
  ]);
}
const TASK_HEAD = ["task", "job", "function", "state", "node", "#attempts", "#ran", "#submitted", "error"];

function render(o) {
  const st = o.status, now = o.now_us;
  const alive = st.nodes.filter((n) => n.alive);
  const cpus = alive.reduce((a, n) => a + (n.resources.cpus || 0), 0);
  const usedCpus = alive.reduce((a, n) => a + ((n.resources.cpus || 0) - (n.available.cpus || 0)), 0);
  $("summary").textContent = `${alive.length} node(s) · ${usedCpus.toFixed(1)}/${cpus} CPUs in use · tasks: ${st.tasks.queued} pending, ${st.tasks.running} running, ${st.tasks.finished} finished, ${st.tasks.failed} failed · ${st.jobs} driver(s) · v${st.version}`;

  table($("nodes-table"), ["node", "host", "state", "resources used", "#running", "object store", "#spilled", "#heartbeat"],
    st.nodes.map((n) => {
      const head = n.pid === o.head_pid && n.hostname === o.head_hostname ? " (head)" : "";
      const state = !n.alive ? '<span class="dead">dead</span>' : n.draining ? "draining" : '<span class="alive">alive</span>';
      const s = n.store || {};
      return [`<span class="id">${esc(shortNode(n.id))}</span>${esc(head)}`, esc(n.hostname), state, resources(n.resources, n.available), esc(n.tasks_running),
        `<meter min="0" max="${s.capacity || 1}" value="${s.used || 0}"></meter> ${esc(bytes(s.used))} / ${esc(bytes(s.capacity))}`,
        esc(bytes(s.spilled_bytes)), esc(n.last_heartbeat_age_s.toFixed(1) + " s")];
    }), "no nodes");
  $("demand").textContent = o.demand.length ? "Waiting for a node: " + o.demand.map((d) => `${d.tasks} task(s) needing ${d.resources}`).join("; ") : "";

  table($("jobs-table"), ["job", "name", "parent", "started", "state", "#pending", "#running", "#finished", "#failed"],
    o.jobs.map((j) => [esc(j.id), esc(j.name), esc(j.parent ?? ""), esc(time(j.started_at_us)), j.ended_at_us ? "ended" : '<span class="state-running">running</span>',
      esc(j.tasks.pending), esc(j.tasks.running), esc(j.tasks.finished), j.tasks.failed ? `<span class="state-failed">${esc(j.tasks.failed)}</span>` : "0"]), "no jobs yet");

  table($("failed-table"), TASK_HEAD, taskRows(o.failed, now), "no failed tasks");
  table($("functions-table"), ["job", "function", "#pending", "#running", "#finished", "#failed", "#mean", "#p95"],
    o.functions.map((f) => [esc(f.job), esc(f.function), esc(f.tasks.pending), esc(f.tasks.running), esc(f.tasks.finished), esc(f.tasks.failed), esc(dur(f.mean_run_us)), esc(dur(f.p95_run_us))]), "no functions yet");
  $("objects-note").textContent = `${o.object_count} object(s) in the table; the largest:`;
  table($("objects-table"), ["object", "#size", "where", "driver holds", "#refs"],
    o.objects.map((b) => [`<span class="id">${esc(b.id)}</span>`, esc(bytes(b.size)), b.stored ? b.holders.map((h) => `<span class="id">${esc(shortNode(h))}</span>`).join(" ") || "lost" : "inline at the head", b.driver_ref ? "yes" : "no", esc(b.refs)]), "no objects");
  table($("actors-table"), ["actor", "class", "name", "state", "node", "#restarts", "death"],
    st.actors.map((a) => [`<span class="id">${esc(a.id)}</span>`, esc(a.class), esc(a.name), esc(a.state), `<span class="id">${esc(shortNode(a.node))}</span>`, esc(a.restarts), `<span class="err">${esc(a.death)}</span>`]), "no actors");
  if (!filtering) {
    table($("tasks-table"), TASK_HEAD, taskRows(o.recent.slice(0, 100), now), "no tasks yet");
    $("tasks-note").textContent = `the latest of ${o.tracked} tracked task(s) (at most ${o.capacity} kept; ${o.dropped} dropped)`;
  }
  timeline(o);
}

function timeline(o) {
  const ran = o.recent.filter((t) => t.started_at_us && t.run_us != null);
  const box = $("timeline-box");
  if (!ran.length) { box.innerHTML = '<div class="note">no task has run yet</div>'; return; }
  const lanes = [...new Set(ran.map((t) => shortNode(t.node) + " pid " + t.executor_pid))].sort();
  const t0 = Math.min(...ran.map((t) => t.started_at_us));
  const t1 = Math.max(...ran.map((t) => t.started_at_us + t.run_us), t0 + 1);
  const W = 1000, L = 150, H = 18, height = lanes.length * H + 20;
  const x = (us) => L + ((us - t0) / (t1 - t0)) * (W - L - 10);
  const colors = ["#1769aa", "#2e9e5b", "#c77c02", "#8e44ad", "#c0392b", "#16a085", "#d35400", "#2c3e50"];
  const fnColor = {};
  let parts = lanes.map((l, i) => `<text x="4" y="${i * H + 13}">${esc(l)}</text>`);
  for (const t of ran) {
    const i = lanes.indexOf(shortNode(t.node) + " pid " + t.executor_pid);
    const c = (fnColor[t.function] ??= colors[Object.keys(fnColor).length % colors.length]);
    const w = Math.max(1, x(t.started_at_us + t.run_us) - x(t.started_at_us));
    parts.push(`<rect x="${x(t.started_at_us).toFixed(1)}" y="${i * H + 3}" width="${w.toFixed(1)}" height="${H - 6}" fill="${t.phase === "failed" ? "#b3261e" : c}"><title>${esc(t.function)} ${esc(t.id)}: ${esc(dur(t.run_us))}</title></rect>`);
  }
  parts.push(`<text x="${L}" y="${height - 4}">${esc(time(t0))}</text><text x="${W - 120}" y="${height - 4}">+${esc(dur(t1 - t0))}</text>`);
  box.innerHTML = `<svg viewBox="0 0 ${W} ${height}" preserveAspectRatio="none" height="${height}">${parts.join("")}</svg>`;
}

let filtering = false;
$("task-filter").addEventListener("submit", async (e) => {
  e.preventDefault();
  const q = new URLSearchParams([...new FormData(e.target)].filter(([, v]) => v !== ""));
  filtering = [...q.keys()].length > 0;
  if (!filtering) return;
  q.set("limit", "200");
  const r = await fetch("/api/tasks?" + q);
  if (!r.ok) { $("tasks-note").textContent = await r.text(); return; }
  const list = await r.json();
  $("tasks-note").textContent = `${list.matched} matching task(s) of ${list.tracked} tracked; showing ${list.tasks.length}`;
  table($("tasks-table"), TASK_HEAD, taskRows(list.tasks, Date.now() * 1000), "no task matches");
});

function connect() {
  const es = new EventSource("/api/events");
  es.addEventListener("overview", (e) => { $("live").classList.add("on"); render(JSON.parse(e.data)); });
  es.onerror = () => { $("live").classList.remove("on"); };
}
connect();
