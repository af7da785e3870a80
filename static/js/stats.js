// Stats page: hours per member and per day from GET /api/v1/orgs/{id}/stats, drawn as SVG bar
// charts (no dependency). A 429 says when to retry; the quota left is shown from RateLimit-*.
(function () {
  "use strict";
  const root = document.getElementById("stats");
  if (!root) return;
  const orgId = root.dataset.orgId;
  const NS = "http://www.w3.org/2000/svg";
  const message = document.getElementById("stats-message");

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(width, height, labelledBy) {
    return el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": labelledBy });
  }

  function fmt(h) { return h >= 10 ? h.toFixed(0) : h.toFixed(1); }

  // Horizontal bars: one per member, longest first.
  function membersChart(members) {
    const box = document.getElementById("chart-members");
    box.textContent = "";
    if (!members.length) { box.textContent = "No hours in this range."; return; }
    const bar = 22, gap = 6, left = 110, width = 420, height = members.length * (bar + gap) + gap;
    const max = Math.max(...members.map((m) => m.hours), 0.01);
    const s = svg(width, height, "members-title");
    members.forEach((m, i) => {
      const y = gap + i * (bar + gap), w = Math.max(1, (width - left - 50) * m.hours / max);
      s.appendChild(el("text", { x: left - 6, y: y + bar / 2 + 4, "text-anchor": "end" }, m.username.slice(0, 16)));
      const r = el("rect", { class: "bar", x: left, y, width: w, height: bar, "data-user": m.username });
      r.appendChild(el("title", {}, `${m.username}: ${m.hours} h`));
      s.appendChild(r);
      s.appendChild(el("text", { x: left + w + 4, y: y + bar / 2 + 4 }, fmt(m.hours) + " h"));
    });
    box.appendChild(s);
  }

  // Vertical bars: one per day of the range, zero days included.
  function daysChart(days) {
    const box = document.getElementById("chart-days");
    box.textContent = "";
    const width = 720, height = 220, bottom = 24, top = 14, left = 34;
    const max = Math.max(...days.map((d) => d.hours), 0.01);
    const step = (width - left) / Math.max(1, days.length);
    const s = svg(width, height, "days-title");
    s.appendChild(el("line", { class: "axis", x1: left, y1: height - bottom, x2: width, y2: height - bottom }));
    s.appendChild(el("text", { x: left - 4, y: top + 4, "text-anchor": "end" }, fmt(max)));
    s.appendChild(el("text", { x: left - 4, y: height - bottom, "text-anchor": "end" }, "0"));
    const labelEvery = Math.ceil(days.length / 10);
    days.forEach((d, i) => {
      const h = (height - bottom - top) * d.hours / max, x = left + i * step;
      const r = el("rect", { class: "bar", x: x + step * 0.1, y: height - bottom - h, width: Math.max(1, step * 0.8),
        height: h, "data-date": d.date });
      r.appendChild(el("title", {}, `${d.date}: ${d.hours} h`));
      s.appendChild(r);
      if (i % labelEvery === 0) s.appendChild(el("text", { x: x + step / 2, y: height - 8, "text-anchor": "middle" }, d.date.slice(5)));
    });
    box.appendChild(s);
  }

  function trackersTable(trackers) {
    const body = document.querySelector("#trackers-table tbody");
    body.textContent = "";
    trackers.forEach((t) => {
      const tr = document.createElement("tr");
      [t.name, fmt(t.hours), t.entries].forEach((v) => { const td = document.createElement("td"); td.textContent = v; tr.appendChild(td); });
      body.appendChild(tr);
    });
  }

  async function load() {
    const from = document.getElementById("stats-from").value, to = document.getElementById("stats-to").value;
    message.classList.remove("error");
    message.textContent = "Loading…";
    const r = await fetch(`/api/v1/orgs/${orgId}/stats?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`,
      { credentials: "same-origin", headers: { Accept: "application/json" } });
    const remaining = r.headers.get("RateLimit-Remaining"), limit = r.headers.get("RateLimit-Limit");
    if (remaining !== null) document.getElementById("stats-quota").textContent = `${remaining} of ${limit} requests left now.`;
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      message.classList.add("error");
      message.textContent = r.status === 429 ? `Too many requests: try again in ${r.headers.get("Retry-After")} s.`
        : `${body.message || r.statusText} (${body.code || r.status})`;
      return;
    }
    message.textContent = "";
    document.getElementById("stats-total").textContent = `${fmt(body.total_hours)} hours from ${body.from} to ${body.to}`;
    membersChart(body.members);
    daysChart(body.days);
    trackersTable(body.trackers);
    root.dataset.loaded = "true";
  }

  document.getElementById("stats-form").addEventListener("submit", (e) => { e.preventDefault(); load(); });
  load();
})();
