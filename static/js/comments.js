// Tracker page: when a comment is posted on this tracker (a "comment.created" entry of the org log
// over /ws/), redraw the threads from the server so every member viewing the page sees it live.
(function () {
  "use strict";
  const root = document.getElementById("comments");
  if (!root) return;
  const trackerId = Number(root.dataset.trackerId);
  const orgId = Number(root.dataset.orgId);
  const live = document.getElementById("comments-live");
  let backoff = 500;
  let refreshing = null;

  async function refresh() {
    if (refreshing) return refreshing;
    refreshing = (async () => {
      const r = await fetch(root.dataset.fragmentUrl, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (!r.ok) return;
      const threads = document.getElementById("threads");
      // Keep what a member is typing: do not redraw while a reply or edit box has text in it.
      const busy = [...threads.querySelectorAll("textarea")].some((t) => t.value && t === document.activeElement);
      if (busy) { live.textContent = "New comments: they appear when you send or leave this box."; return; }
      threads.innerHTML = await r.text();
      live.textContent = "New comment received.";
    })().finally(() => { refreshing = null; });
    return refreshing;
  }

  function isOurComment(msg) {
    return msg.type === "log.entry" && msg.org_id === orgId && msg.kind === "comment.created" &&
      !!msg.payload && Number(msg.payload.tracker_id) === trackerId;
  }

  function connect() {
    const ws = new WebSocket(heraldSocketUrl(`/ws/`));
    ws.onopen = () => { backoff = 500; root.dataset.connected = "true"; };
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (isOurComment(msg)) refresh();
    };
    ws.onclose = () => {
      root.dataset.connected = "false";
      setTimeout(() => { connect(); refresh(); }, backoff); // anything missed while away is redrawn
      backoff = Math.min(backoff * 2, 10000);
    };
  }
  connect();
})();
