// Reports page: request a report, follow its progress live (report.progress over /ws/, with a poll
// of active jobs as a fallback), cancel, download. The table is drawn by the server, so a reload
// shows every job where it stands.
(function () {
  "use strict";
  const root = document.getElementById("reports");
  if (!root) return;
  const orgId = root.dataset.orgId;
  const rows = document.getElementById("job-rows");
  const message = document.getElementById("report-message");
  const ACTIVE = ["queued", "running"];
  const csrf = () => (document.cookie.match(/csrftoken=([^;]+)/) || [])[1] || "";
  const KINDS = { time_entries: "Time entries", member_hours: "Hours per member and day" };

  async function api(method, url, body) {
    const r = await fetch(url, { method, credentials: "same-origin", body: body ? JSON.stringify(body) : undefined,
      headers: { "X-CSRFToken": csrf(), "Content-Type": "application/json", Accept: "application/json" } });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw Object.assign(new Error(data.message || r.statusText), { data, status: r.status });
    return Object.assign(data, { httpStatus: r.status });
  }

  function cell(tr, cls) { return tr.querySelector("." + cls); }

  function rowFor(job) {
    let tr = rows.querySelector(`tr[data-job-id="${job.id}"]`);
    if (tr) return tr;
    const empty = rows.querySelector("tr.empty");
    if (empty) empty.remove();
    tr = document.createElement("tr");
    tr.dataset.jobId = job.id;
    tr.innerHTML = `<td></td><td></td><td></td><td></td><td class="job-status"></td>
      <td><progress max="100" value="0"></progress> <span class="job-progress"></span></td>
      <td class="job-rows"></td><td class="job-actions"></td>`;
    const tds = tr.querySelectorAll("td");
    tds[0].textContent = job.id;
    tds[1].textContent = `${KINDS[job.kind] || job.kind} (${job.format})`;
    tds[2].textContent = `${job.from} – ${job.to}`;
    tds[3].textContent = job.requested_by && job.requested_by.startsWith("api-key:") ? "API key" : job.requested_by;
    tr.querySelector("progress").setAttribute("aria-label", `Report ${job.id} progress`);
    rows.insertBefore(tr, rows.firstChild);
    return tr;
  }

  function render(job) {
    const tr = rowFor(job);
    tr.dataset.status = job.status;
    cell(tr, "job-status").textContent = job.status;
    tr.querySelector("progress").value = job.progress;
    tr.querySelector("progress").textContent = job.progress + "%";
    cell(tr, "job-progress").textContent = job.progress + "%";
    cell(tr, "job-rows").textContent = job.rows;
    const actions = cell(tr, "job-actions");
    actions.textContent = "";
    if (job.status === "succeeded" && job.download_url) {
      const a = document.createElement("a");
      a.className = "download"; a.href = job.download_url; a.textContent = "Download";
      actions.appendChild(a);
    } else if (ACTIVE.includes(job.status)) {
      const b = document.createElement("button");
      b.type = "button"; b.className = "cancel"; b.textContent = "Cancel";
      actions.appendChild(b);
    } else if (job.error) {
      const s = document.createElement("span");
      s.className = "error"; s.textContent = job.error.slice(0, 80);
      actions.appendChild(s);
    } else if (job.status === "succeeded") {
      actions.textContent = "expired";
    }
    if (ACTIVE.includes(job.status)) schedulePoll();
  }

  document.getElementById("report-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    message.classList.remove("error");
    try {
      const job = await api("POST", `/api/v1/orgs/${orgId}/reports/`,
        { kind: f.get("kind"), from: f.get("from"), to: f.get("to"), format: f.get("format") });
      render(job);
      message.textContent = job.httpStatus === 202 ? `Report #${job.id} queued.` :
        `The same report is already ${job.status} (#${job.id}).`;
    } catch (err) {
      message.classList.add("error");
      message.textContent = err.message + (err.data && err.data.code ? ` (${err.data.code})` : "");
    }
  });

  rows.addEventListener("click", async (e) => {
    if (!e.target.classList.contains("cancel")) return;
    const id = e.target.closest("tr").dataset.jobId;
    try { render(await api("POST", `/api/v1/reports/${id}/cancel`)); message.textContent = `Report #${id} cancelled.`; }
    catch (err) { message.textContent = err.message; }
  });

  // Poll active jobs until none is left: the fallback when a WebSocket message is missed.
  let pollTimer = null;
  function schedulePoll() { if (!pollTimer) pollTimer = setTimeout(poll, 1500); }
  async function poll() {
    pollTimer = null;
    const active = [...rows.querySelectorAll("tr[data-job-id]")].filter((tr) => ACTIVE.includes(tr.dataset.status));
    for (const tr of active) {
      try { render(await api("GET", `/api/v1/reports/${tr.dataset.jobId}`)); } catch (err) { /* next round */ }
    }
  }
  if (rows.querySelector('tr[data-status="queued"], tr[data-status="running"]')) schedulePoll();

  let backoff = 500;
  function connect() {
    const ws = new WebSocket(heraldSocketUrl(`/ws/`));
    ws.onopen = () => { backoff = 500; root.dataset.connected = "true"; };
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (msg.type === "report.progress" && msg.report && String(msg.report.organization_id) === orgId) render(msg.report);
    };
    ws.onclose = () => { root.dataset.connected = "false"; setTimeout(connect, backoff); backoff = Math.min(backoff * 2, 10000); };
  }
  connect();
})();
