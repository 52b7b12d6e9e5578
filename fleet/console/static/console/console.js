/* Console behaviour shared by every page: menu, confirmations, copy buttons, live figures.
   Plain JS, no dependencies; every page works without it, this only adds comfort. */
(function () {
  "use strict";

  var Fleet = window.Fleet = {};

  /* Fetch JSON with the session cookie; reject on a non-2xx answer. */
  Fleet.getJSON = function (url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) { throw new Error(r.status + " " + url); }
        return r.json();
      });
  };

  /* Run fn now and every ms milliseconds while the page is visible. */
  Fleet.every = function (ms, fn) {
    var timer = null;
    function tick() { if (!document.hidden) { fn(); } }
    timer = window.setInterval(tick, ms);
    return function stop() { window.clearInterval(timer); };
  };

  Fleet.format = function (value, digits) {
    if (value === null || value === undefined || isNaN(value)) { return "—"; }
    return Number(value).toLocaleString("en-US", {
      minimumFractionDigits: digits || 0, maximumFractionDigits: digits || 0
    });
  };

  /* Build a query string; arrays repeat the key (model_version=1&model_version=2). */
  Fleet.query = function (params) {
    var parts = [];
    Object.keys(params).forEach(function (k) {
      var v = params[k];
      if (v === null || v === undefined || v === "") { return; }
      [].concat(v).forEach(function (item) {
        parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(item));
      });
    });
    return parts.join("&");
  };

  function initNav() {
    var toggle = document.querySelector("[data-nav-toggle]");
    var nav = document.getElementById("nav");
    if (!toggle || !nav) { return; }
    toggle.addEventListener("click", function () {
      var open = nav.classList.toggle("is-open");
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
    });
  }

  /* Destructive forms ask first; the server still checks the role on every POST. */
  function initConfirm() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    // Plain-HTTP deployments have no clipboard API: fall back to a selected textarea.
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(area);
      if (ok) { resolve(); } else { reject(new Error("copy refused")); }
    });
  }

  function initCopy() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var source = document.querySelector(button.getAttribute("data-copy"));
        var label = button.querySelector("[data-copy-label]") || button;
        copyText(source.textContent.trim()).then(function () {
          label.textContent = "Copied";
        }, function () {
          label.textContent = "Select and copy";
          var range = document.createRange();
          range.selectNodeContents(source);
          window.getSelection().removeAllRanges();
          window.getSelection().addRange(range);
        });
        window.setTimeout(function () { label.textContent = "Copy"; }, 2500);
      });
    });
  }

  /* Long POSTs (upload + validation) show that something is happening. */
  function initBusy() {
    document.querySelectorAll("form[data-busy]").forEach(function (form) {
      form.addEventListener("submit", function () {
        var busy = form.querySelector(".busy");
        var button = form.querySelector("button[type=submit]");
        if (busy) {
          busy.hidden = false;
          busy.querySelector(".busy-label").textContent = form.getAttribute("data-busy");
        }
        if (button) { window.setTimeout(function () { button.disabled = true; }, 0); }
      });
    });
  }

  /* Overview: the ingest figures of the last few minutes, refreshed every 10 s. */
  function initLiveIngest() {
    var card = document.querySelector("[data-live-ingest]");
    if (!card) { return; }
    var url = card.getAttribute("data-url");
    var windowS = Number(card.getAttribute("data-window-s"));
    var dot = card.querySelector(".live-dot");
    var digits = { events_per_s: 1, mean_latency_ms: 2 };
    Fleet.every(10000, function () {
      var now = new Date();
      var since = new Date(now.getTime() - windowS * 1000);
      Fleet.getJSON(url + "?" + Fleet.query({ since: since.toISOString(), until: now.toISOString() }))
        .then(function (data) {
          card.querySelectorAll("[data-field]").forEach(function (el) {
            var key = el.getAttribute("data-field");
            el.textContent = Fleet.format(data[key], digits[key] || 0);
          });
          if (dot) { dot.classList.remove("is-stale"); }
        })
        .catch(function () { if (dot) { dot.classList.add("is-stale"); } });
    });
  }

  /* A page answering a POST with a one-time secret becomes a plain GET entry in the history,
     so reloading it or coming back to it never reposts the form (nor shows the secret). */
  function initShownOnce() {
    if (document.querySelector("[data-shown-once]") && window.history.replaceState) {
      window.history.replaceState(null, "", window.location.href);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    initShownOnce();
    initNav();
    initConfirm();
    initCopy();
    initBusy();
    initLiveIngest();
  });
})();
