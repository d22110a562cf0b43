// Gearman HQ: the little JavaScript the pages need. Everything else is htmx.
(function () {
  "use strict";

  function typing(el) {
    if (!el) return false;
    var tag = el.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable;
  }

  // The page's own search box when it has one, else the one in the header.
  function searchBox() {
    return document.querySelector('[data-hq-search="page"]') ||
      document.querySelector("[data-hq-search]");
  }

  // "/" focuses search; Escape leaves it.
  document.addEventListener("keydown", function (event) {
    if (event.key === "/" && !event.ctrlKey && !event.metaKey && !event.altKey &&
        !typing(event.target)) {
      var box = searchBox();
      if (box) {
        event.preventDefault();
        box.focus();
        box.select();
      }
    } else if (event.key === "Escape" && event.target.matches("[data-hq-search]")) {
      event.target.blur();
    }
  });

  // Forms marked data-strip-empty leave empty fields out of the URL.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.matches("form[data-strip-empty]")) return;
    var emptied = [];
    Array.prototype.forEach.call(form.elements, function (el) {
      if (el.name && !el.disabled && el.value === "") {
        el.disabled = true;
        emptied.push(el);
      }
    });
    setTimeout(function () {
      emptied.forEach(function (el) { el.disabled = false; });
    }, 0);
  });

  // htmx requests too: no "state=&worker=&…" in the pushed URL.
  document.addEventListener("htmx:configRequest", function (event) {
    if (event.detail.verb !== "get") return;
    var params = event.detail.parameters;
    Object.keys(params).forEach(function (key) {
      if (params[key] === "") delete params[key];
    });
  });

  var toastTimer = null;
  function toast(message, tone) {
    var el = document.getElementById("toast");
    if (!el) return;
    el.textContent = message;
    el.className = "toast" + (tone ? " toast-" + tone : "");
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { el.hidden = true; }, 4000);
  }

  document.addEventListener("htmx:responseError", function (event) {
    var status = event.detail.xhr ? event.detail.xhr.status : 0;
    toast(status >= 500 ? "The server failed to answer (" + status + "). Try again."
      : "Request failed (" + status + ").", "error");
  });
  document.addEventListener("htmx:sendError", function () {
    toast("Gearman HQ is not answering. Check your connection.", "error");
  });

  // Copy buttons: <button data-copy="text">.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var text = button.getAttribute("data-copy");
    var done = function () { toast("Copied " + text); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { toast("Copy failed", "error"); });
    } else {
      var area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); done(); } catch (e) { toast("Copy failed", "error"); }
      area.remove();
    }
  });
})();
