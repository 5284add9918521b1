// Parley's console: the live parts (no inline scripts: the Content-Security-Policy allows only this file and htmx).
// Without JavaScript every page is whole and a reload shows the same.
(function () {
  "use strict";

  // Times are rendered in UTC by the server; show them in the browser's time zone.
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) { return; }
      var short = el.classList.contains("hour");
      el.textContent = short
        ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
        : when.toLocaleString([], { dateStyle: "medium", timeStyle: "medium" });
      el.title = when.toString();
    });
  }

  // Server-sent events: each names a chat that changed ("reload": anything may have). Parts that show that chat
  // (data-live="<chat id>") or any chat (data-live="*") are asked again by htmx (hx-trigger="live").
  // A part is asked again at most once a second however busy Parley is: the first change at once, the rest of
  // that second in one trailing refresh.
  var QUIET_MS = 1000;
  function refresh(el) {
    var now = Date.now(), last = el._liveAt || 0;
    if (el._liveTimer) { return; }
    if (now - last >= QUIET_MS) {
      el._liveAt = now;
      htmx.trigger(el, "live");
      return;
    }
    el._liveTimer = setTimeout(function () {
      el._liveTimer = null;
      el._liveAt = Date.now();
      htmx.trigger(el, "live");
    }, QUIET_MS - (now - last));
  }

  function listen() {
    if (!window.EventSource || !document.querySelector("[data-live]")) { return; }
    var source = new EventSource("/console/live");
    source.onopen = function () { document.body.setAttribute("data-live-connected", "true"); };
    source.onmessage = function (event) {
      document.querySelectorAll("[data-live]").forEach(function (el) {
        var wanted = el.getAttribute("data-live");
        if (wanted === "*" || wanted === event.data || event.data === "reload") { refresh(el); }
      });
    };
  }

  // A confirmation before an act that cannot be undone (clearing an opt-out, ending a chat).
  function confirmations() {
    document.addEventListener("submit", function (event) {
      var ask = event.target.getAttribute("data-confirm");
      if (ask && !window.confirm(ask)) { event.preventDefault(); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    listen();
    confirmations();
  });
  document.addEventListener("htmx:afterSwap", function (event) { localTimes(event.target); });
})();
