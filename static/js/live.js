// Gearman HQ: live pages. Nothing here builds HTML.
//
// A page marks the parts that stay current with data-hq-live="queue job …" (the message
// types they care about) and optionally data-hq-function="name". Those parts carry
// hx-get (their own URL, which answers htmx with the fragment) and
// hx-trigger="hq:changed, every 10s". This file keeps one websocket to /ws/live/; a
// message of a type a part listens to makes htmx re-fetch that part, at most once a second
// however many messages arrive. The slow "every" poll keeps the page current while the
// socket is down; a hidden tab skips polls and catches up when shown again. The dot in
// the header (data-hq-live-status) says which of the two is happening.
(function () {
  "use strict";

  var THROTTLE_MS = 1000;
  var BACKOFF_MIN_MS = 1000;
  var BACKOFF_MAX_MS = 30000;

  var socket = null;
  var delay = BACKOFF_MIN_MS;
  var retryTimer = null;
  var everConnected = false;

  function regions() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-hq-live]"));
  }

  function pollSeconds() {
    var el = document.querySelector("[data-hq-live][hx-trigger]");
    var m = el && /every\s+(\d+)s/.exec(el.getAttribute("hx-trigger"));
    return m ? m[1] : "10";
  }

  function setStatus(state) {
    var el = document.querySelector("[data-hq-live-status]");
    if (!el) return;
    var labels = {
      connecting: ["Connecting", "Connecting to live updates…"],
      live: ["Live", "Live: this page updates as gearmand's queues and workers change."],
      reconnecting: ["Reconnecting", "Live updates are interrupted; reconnecting. Meanwhile " +
        "the page refreshes every " + pollSeconds() + " s."],
    };
    el.hidden = false;
    el.setAttribute("data-state", state);
    el.title = labels[state][1];
    var label = el.querySelector(".live-label");
    if (label) label.textContent = labels[state][0];
  }

  // Whether a message may concern function ``fn``. Messages name it as "function", or list
  // "functions" (an array, or an object keyed by name); "functions": null means anything
  // on that server may have changed.
  function concerns(msg, fn) {
    if (typeof msg.function === "string") return msg.function === fn;
    var fns = msg.functions;
    if (fns == null) return true;
    if (Array.isArray(fns)) return fns.indexOf(fn) >= 0;
    if (typeof fns === "object") return Object.prototype.hasOwnProperty.call(fns, fn);
    return true;
  }

  function wants(el, msg) {
    var types = (el.getAttribute("data-hq-live") || "").split(/\s+/);
    if (types.indexOf(msg.type) < 0) return false;
    var fn = el.getAttribute("data-hq-function");
    return fn === null || concerns(msg, fn);
  }

  // Throttle with a trailing call: the first change schedules one refresh a second later;
  // changes until then ride along with it.
  function refresh(el) {
    if (el._hqPending) return;
    el._hqPending = setTimeout(function () {
      el._hqPending = null;
      if (document.hidden) {
        el._hqStale = true;
      } else if (window.htmx && document.contains(el)) {
        window.htmx.trigger(el, "hq:changed");
      }
    }, THROTTLE_MS);
  }

  function onMessage(event) {
    var msg;
    try { msg = JSON.parse(event.data); } catch (e) { return; }
    if (!msg || typeof msg.type !== "string") return;
    regions().forEach(function (el) { if (wants(el, msg)) refresh(el); });
  }

  // <meta name="hq-live-url">: "" this origin; ":8001" this host on that port (python -m
  // hq.serve serves websockets on their own port); "/path"; or a full ws(s):// URL
  function liveUrl() {
    var meta = document.querySelector('meta[name="hq-live-url"]');
    var set = meta ? meta.getAttribute("content") || "" : "";
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    if (/^wss?:\/\//.test(set)) return set;
    if (/^:\d+$/.test(set)) return scheme + location.hostname.replace(/^([^\[].*:.*)$/, "[$1]") + set + "/ws/live/";
    if (set.charAt(0) === "/") return scheme + location.host + set;
    return scheme + location.host + "/ws/live/";
  }

  function connect() {
    retryTimer = null;
    var url = liveUrl();
    try {
      socket = new WebSocket(url);
    } catch (e) {
      retry();
      return;
    }
    socket.onopen = function () {
      delay = BACKOFF_MIN_MS;
      setStatus("live");
      var scoped = document.querySelector("[data-hq-live][data-hq-function]");
      if (scoped) {
        socket.send(JSON.stringify({ subscribe: { function: scoped.getAttribute("data-hq-function") } }));
      }
      if (everConnected) regions().forEach(refresh); // catch up on what the gap missed
      everConnected = true;
    };
    socket.onmessage = onMessage;
    socket.onclose = function () {
      socket = null;
      setStatus("reconnecting");
      retry();
    };
  }

  function retry() {
    if (retryTimer) return;
    var wait = delay * (0.75 + Math.random() * 0.5); // jitter: not every tab at once
    delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    retryTimer = setTimeout(connect, wait);
  }

  // A hidden tab does not poll; it refreshes once when shown again.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var el = event.detail && event.detail.elt;
    if (document.hidden && el && el.hasAttribute && el.hasAttribute("data-hq-live")) {
      el._hqStale = true;
      event.preventDefault();
    }
  });
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) return;
    regions().forEach(function (el) {
      if (el._hqStale) {
        el._hqStale = false;
        refresh(el);
      }
    });
  });

  function start() {
    if (!regions().length || !("WebSocket" in window)) return;
    setStatus("connecting");
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
