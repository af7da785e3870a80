// Where this page opens its live socket: the address the server rendered into
// <meta name="herald-live-socket"> (LIVE_WEBSOCKET_URL, or the web tier's socket port), else this page's origin.
window.heraldSocketUrl = function (path) {
  const meta = document.querySelector('meta[name="herald-live-socket"]');
  const base = (meta && meta.content) || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
  return base + path;
};
