// Inbox page: kept current over /ws/. A `notification.created` (a new notification for this member)
// or a `notification.read` (read here or on another device) redraws the list from the server, so
// the page shows what the inbox API would answer; focus stays on the control it was on when that
// control is still there. After a reconnect the list is redrawn too (whatever happened meanwhile).
(function () {
  "use strict";
  const root = document.getElementById("inbox");
  if (!root) return;
  const body = document.getElementById("inbox-body");
  const live = document.getElementById("inbox-live");
  const clientId = Math.random().toString(36).slice(2);
  let backoff = 500;
  let pending = null;
  let again = false;

  async function redraw(announce) {
    if (pending) { again = true; return pending; }
    pending = (async () => {
      do {
        again = false;
        const r = await fetch(root.dataset.fragmentUrl, { credentials: "same-origin", headers: { Accept: "text/html" } });
        if (!r.ok) { live.textContent = `Could not refresh the inbox (HTTP ${r.status}).`; return; }
        const focusedId = document.activeElement && body.contains(document.activeElement) ? document.activeElement.id : null;
        body.innerHTML = await r.text();
        if (focusedId && document.getElementById(focusedId)) document.getElementById(focusedId).focus();
        root.dataset.unread = document.getElementById("inbox-unread").dataset.count;
      } while (again);
      if (announce) live.textContent = announce;
    })().finally(() => { pending = null; });
    return pending;
  }

  function connect() {
    const ws = new WebSocket(heraldSocketUrl(`/ws/?client_id=${clientId}`));
    ws.onopen = () => {
      if (root.dataset.connected === "reconnecting") redraw();
      backoff = 500;
      root.dataset.connected = "true";
    };
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (msg.type === "notification.created") redraw(`New notification: ${msg.title}`);
      else if (msg.type === "notification.read") redraw(msg.all ? "All notifications read." : "");
    };
    ws.onclose = () => {
      root.dataset.connected = "reconnecting";
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }
  root.dataset.unread = document.getElementById("inbox-unread").dataset.count;
  connect();
})();
