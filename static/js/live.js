// Live page: trackers, timeline and inbox over /ws/, gapless per organization.
//
// Every organization message carries its seq. Per organization the page applies seq lastSeq + 1
// only; a larger seq (or a `resync` from the server) starts a catch-up from
// GET /api/v1/orgs/{id}/events/?after_seq=lastSeq (every page), and live messages that arrive
// meanwhile are buffered and applied after it, in seq order, so lastSeq never passes an entry that
// was not applied. A failed catch-up is shown and retried with backoff. The socket connects with
// ?after=<org>:<lastSeq>,... so the server replays what happened between page load and connect
// (and while disconnected) before any live message.
(function () {
  "use strict";
  const root = document.getElementById("live");
  if (!root) return;
  const csrf = () => (document.cookie.match(/csrftoken=([^;]+)/) || [])[1] || "";
  const clientId = Math.random().toString(36).slice(2);
  const orgs = {};
  document.querySelectorAll("section.org").forEach((el) => {
    orgs[el.dataset.orgId] = { id: el.dataset.orgId, el, lastSeq: 0, trackers: {}, catching: false, again: false,
      buffer: [], error: null };
  });
  const knownNotifications = new Set();
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function api(method, url) {
    const r = await fetch(url, { method, credentials: "same-origin",
      headers: { "X-CSRFToken": csrf(), "X-Client-Id": clientId, "Accept": "application/json" } });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw Object.assign(new Error(body.message || r.statusText || `HTTP ${r.status}`), { body, status: r.status });
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

  // --- the org log, in seq order ------------------------------------------------------------

  function describe(ev) {
    const who = ev.actor || "someone";
    if (ev.type === "tracker.event" || ev.tracker_id !== undefined) {
      const verb = ev.action === "start" ? "started" : "stopped";
      return `#${ev.seq} ${who} ${verb} ${ev.tracker_name || "tracker " + ev.tracker_id} · ${new Date(ev.occurred_at).toLocaleTimeString()}`;
    }
    return `#${ev.seq} ${who}: ${ev.kind}` + (ev.occurred_at ? ` · ${new Date(ev.occurred_at).toLocaleTimeString()}` : "");
  }

  // Applies the entry right after lastSeq; the caller guarantees ev.seq === org.lastSeq + 1.
  function applyEntry(org, ev) {
    org.lastSeq = ev.seq;
    org.el.dataset.appliedSeq = ev.seq;
    if (ev.private) return; // an entry for other members: its seq only, nothing to show
    const li = document.createElement("li");
    li.dataset.seq = ev.seq;
    li.textContent = describe(ev);
    const tl = org.el.querySelector('[data-role="timeline"]');
    tl.insertBefore(li, tl.firstChild);
    const t = org.trackers[ev.tracker_id];
    if (t && ev.action) { t.is_running = ev.action === "start"; t.started_at = t.is_running ? ev.occurred_at : null; renderTracker(org, t); }
  }

  // Apply what follows lastSeq without a hole; returns false if `ev` is beyond a hole.
  function offer(org, ev) {
    if (ev.seq <= org.lastSeq) return true; // seen already (replayed after a reconnect)
    if (ev.seq !== org.lastSeq + 1) return false;
    applyEntry(org, ev);
    return true;
  }

  function onOrgMessage(msg) {
    const org = orgs[msg.org_id];
    if (!org) return;
    if (org.catching || !offer(org, msg)) {
      org.buffer.push(msg);
      catchUp(org);
    }
  }

  async function fetchAfter(org) {
    let after = org.lastSeq;
    for (;;) {
      const page = await api("GET", `/api/v1/orgs/${org.id}/events/?after_seq=${after}&limit=200`);
      for (const e of page.results) {
        if (!offer(org, e)) throw new Error(`the log skipped from #${org.lastSeq} to #${e.seq}`);
      }
      if (page.next_after_seq == null) return;
      after = page.next_after_seq;
    }
  }

  // Brings the org up to date from the API, then applies the buffered live messages. Only one runs
  // per org; a resync or a new hole while it runs makes it go round again.
  async function catchUp(org, force) {
    if (force) org.again = true;
    if (org.catching) return;
    org.catching = true;
    let delay = 500;
    try {
      for (;;) {
        org.again = false;
        try {
          await fetchAfter(org);
          org.buffer.sort((a, b) => a.seq - b.seq);
          while (org.buffer.length && offer(org, org.buffer[0])) org.buffer.shift();
          if (org.error) { org.error = null; showErrors(); }
          if (!org.buffer.length && !org.again) break;
          if (org.buffer.length) await sleep(200); // the hole's entries are not readable yet
        } catch (e) {
          org.error = `catch-up failed (${e.message}); retrying in ${Math.round(delay / 100) / 10} s`;
          showErrors();
          await sleep(delay);
          delay = Math.min(delay * 2, 30000);
        }
      }
    } finally {
      org.catching = false;
    }
    refreshInboxSoon();
  }

  function showErrors() {
    const errors = Object.values(orgs).filter((o) => o.error).map((o) => `${o.el.querySelector("h2").textContent}: ${o.error}`);
    root.dataset.catchupError = errors.length ? "true" : "false";
    setStatus(errors.length ? errors.join(" · ") : (root.dataset.connected === "true" ? "Live" : "Reconnecting…"));
  }

  async function loadAll() {
    for (const org of Object.values(orgs)) {
      let url = `/api/v1/orgs/${org.id}/trackers/?page_size=200`;
      while (url) {
        const page = await api("GET", url);
        page.results.forEach((t) => renderTracker(org, t));
        url = page.next ? new URL(page.next, location.href).pathname + new URL(page.next, location.href).search : null;
      }
      // The last 20 entries before page load, then everything since (the timeline starts there).
      org.lastSeq = Math.max(0, Number(org.el.dataset.lastSeq) - 20);
      await fetchAfter(org);
    }
    await loadInbox();
  }

  // --- inbox and badge ----------------------------------------------------------------------

  async function loadInbox() {
    const page = await api("GET", "/api/v1/notifications/?page_size=20");
    const list = document.getElementById("inbox-list");
    list.innerHTML = "";
    page.results.forEach((n) => addInbox(n, false));
    await refreshCount();
  }

  async function refreshCount() {
    const c = await api("GET", "/api/v1/notifications/unread-count");
    document.getElementById("unread-count").textContent = c.unread;
  }

  // The badge is counted up live and set from the server after catch-ups and bursts (at most every
  // 2 s, always once after the last), so it ends equal to unread-count.
  let refreshTimer = null;
  let lastRefresh = 0;
  function refreshInboxSoon() {
    if (refreshTimer) return;
    const wait = Math.max(300, 2000 - (Date.now() - lastRefresh));
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      lastRefresh = Date.now();
      try { await refreshCount(); } catch (e) { refreshInboxSoon(); }
    }, wait);
  }

  function addInbox(n, prepend) {
    knownNotifications.add(n.id);
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

  // --- the socket ---------------------------------------------------------------------------

  let backoff = 500;
  function connect() {
    const after = Object.values(orgs).map((o) => `${o.id}:${o.lastSeq}`).join(",");
    const ws = new WebSocket(heraldSocketUrl(`/ws/?client_id=${clientId}&after=${after}`));
    ws.onopen = () => {
      backoff = 500;
      root.dataset.connected = "true";
      showErrors();
      refreshInboxSoon(); // reads synced from other devices while this one was away
    };
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (msg.type === "tracker.event" || msg.type === "log.entry") onOrgMessage(msg);
      else if (msg.type === "resync") { if (orgs[msg.org_id]) catchUp(orgs[msg.org_id], true); }
      else if (msg.type === "notification.created") {
        if (knownNotifications.has(msg.id)) return;
        addInbox({ id: msg.id, title: msg.title, read_at: null }, true);
        const el = document.getElementById("unread-count"); el.textContent = Number(el.textContent) + 1;
        refreshInboxSoon();
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
