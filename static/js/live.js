// Live page: trackers, timeline and inbox over /ws/, resuming from the last seq after a reconnect.
(function () {
  "use strict";
  const root = document.getElementById("live");
  if (!root) return;
  const csrf = () => (document.cookie.match(/csrftoken=([^;]+)/) || [])[1] || "";
  const clientId = Math.random().toString(36).slice(2);
  const orgs = {};
  document.querySelectorAll("section.org").forEach((el) => {
    orgs[el.dataset.orgId] = { el, lastSeq: 0, trackers: {} };
  });

  async function api(method, url) {
    const r = await fetch(url, { method, credentials: "same-origin",
      headers: { "X-CSRFToken": csrf(), "X-Client-Id": clientId, "Accept": "application/json" } });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw Object.assign(new Error(body.message || r.statusText), { body, status: r.status });
    return body;
  }

  function fmt(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    return [Math.floor(s / 3600), Math.floor(s / 60) % 60, s % 60].map((n) => String(n).padStart(2, "0")).join(":");
  }

  function renderTracker(org, t) {
    let row = org.el.querySelector(`.tracker[data-tracker-id="${t.id}"]`);
    if (!row) {
      row = document.createElement("div");
      row.className = "tracker";
      row.dataset.trackerId = t.id;
      row.innerHTML = '<strong class="name"></strong><span class="state"></span><span class="clock"></span><button type="button"></button>';
      row.querySelector("button").addEventListener("click", async () => {
        const cur = org.trackers[t.id];
        try { await api("POST", `/api/v1/trackers/${t.id}/${cur.is_running ? "stop" : "start"}`); }
        catch (e) { setStatus(e.message); }
      });
      org.el.querySelector('[data-role="trackers"]').appendChild(row);
    }
    org.trackers[t.id] = t;
    row.classList.toggle("running", t.is_running);
    row.querySelector(".name").textContent = t.name;
    row.querySelector(".state").textContent = t.is_running ? "Running" : "Stopped";
    row.querySelector("button").textContent = t.is_running ? "Stop" : "Start";
    tick();
  }

  function tick() {
    Object.values(orgs).forEach((org) => Object.values(org.trackers).forEach((t) => {
      const row = org.el.querySelector(`.tracker[data-tracker-id="${t.id}"] .clock`);
      if (row) row.textContent = t.is_running && t.started_at ? fmt(Date.now() - Date.parse(t.started_at)) : "—";
    }));
  }
  setInterval(tick, 1000);

  function applyEvent(ev) {
    const org = orgs[ev.org_id];
    if (!org || ev.seq <= org.lastSeq) return; // duplicates after a reconnect are dropped by seq
    org.lastSeq = ev.seq;
    const li = document.createElement("li");
    li.dataset.seq = ev.seq;
    li.textContent = `#${ev.seq} ${ev.actor || "someone"} ${ev.action === "start" ? "started" : "stopped"} ${ev.tracker_name || "tracker " + ev.tracker_id} · ${new Date(ev.occurred_at).toLocaleTimeString()}`;
    const tl = org.el.querySelector('[data-role="timeline"]');
    tl.insertBefore(li, tl.firstChild);
    const t = org.trackers[ev.tracker_id];
    if (t) { t.is_running = ev.action === "start"; t.started_at = t.is_running ? ev.occurred_at : null; renderTracker(org, t); }
  }

  async function catchUp(orgId) {
    const org = orgs[orgId];
    let after = org.lastSeq;
    for (;;) {
      const page = await api("GET", `/api/v1/orgs/${orgId}/events/?after_seq=${after}&limit=200`);
      page.results.forEach((e) => applyEvent(e));
      if (page.next_after_seq == null) break;
      after = page.next_after_seq;
    }
  }

  async function loadAll() {
    for (const id of Object.keys(orgs)) {
      let url = `/api/v1/orgs/${id}/trackers/?page_size=200`;
      while (url) {
        const page = await api("GET", url);
        page.results.forEach((t) => renderTracker(orgs[id], t));
        url = page.next ? new URL(page.next, location.href).pathname + new URL(page.next, location.href).search : null;
      }
      const recent = await api("GET", `/api/v1/orgs/${id}/events/?after_seq=${Math.max(0, Number(orgs[id].el.dataset.lastSeq) - 20)}&limit=200`);
      recent.results.forEach((e) => applyEvent(e));
      await catchUp(id);
    }
    await loadInbox();
  }

  async function loadInbox() {
    const page = await api("GET", "/api/v1/notifications/?page_size=20");
    const list = document.getElementById("inbox-list");
    list.innerHTML = "";
    page.results.forEach((n) => addInbox(n, false));
    const c = await api("GET", "/api/v1/notifications/unread-count");
    document.getElementById("unread-count").textContent = c.unread;
  }

  function addInbox(n, prepend) {
    const list = document.getElementById("inbox-list");
    if (list.querySelector(`li[data-id="${n.id}"]`)) return;
    const li = document.createElement("li");
    li.dataset.id = n.id;
    li.className = n.read_at ? "" : "unread";
    li.textContent = n.title;
    li.addEventListener("click", () => api("POST", `/api/v1/notifications/${n.id}/read`).then(() => markRead([n.id])));
    prepend ? list.insertBefore(li, list.firstChild) : list.appendChild(li);
  }

  function markRead(ids, all) {
    document.querySelectorAll("#inbox-list li").forEach((li) => {
      if (all || ids.includes(Number(li.dataset.id))) li.classList.remove("unread");
    });
  }

  document.getElementById("read-all").addEventListener("click", async () => {
    await api("POST", "/api/v1/notifications/read-all");
    markRead([], true);
    document.getElementById("unread-count").textContent = "0";
  });

  function setStatus(text) { document.getElementById("conn-status").textContent = text; }

  let backoff = 500;
  function connect() {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/?client_id=${clientId}`);
    ws.onopen = async () => {
      backoff = 500;
      setStatus("Live");
      root.dataset.connected = "true";
      for (const id of Object.keys(orgs)) await catchUp(id).catch(() => {}); // resume from last seq
    };
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (msg.type === "tracker.event") applyEvent(msg);
      else if (msg.type === "notification.created") {
        addInbox({ id: msg.id, title: msg.title, read_at: null }, true);
        const el = document.getElementById("unread-count"); el.textContent = Number(el.textContent) + 1;
      } else if (msg.type === "notification.read") {
        markRead(msg.ids, msg.all);
        document.getElementById("unread-count").textContent = msg.unread_count;
      } else if (msg.type === "memberships") {
        // Joined or left an organization: the page lists organizations, so draw it afresh.
        const now = msg.org_ids.map(String).sort().join(",");
        if (now !== Object.keys(orgs).sort().join(",")) window.location.reload();
      }
    };
    ws.onclose = () => {
      root.dataset.connected = "false";
      setStatus("Reconnecting…");
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  loadAll().then(connect).catch((e) => setStatus("Could not load: " + e.message));
})();
