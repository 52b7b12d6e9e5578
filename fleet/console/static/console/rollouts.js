/* Rollout pages: a pause reason asked for in a prompt, a stale-preview guard on the create
   form, and the detail page following its rollout by polling /api/v1/rollouts/<id>/.
   Plain JS; without it the pages still work (they just do not move until reloaded). */
(function () {
  "use strict";

  var FINAL = ["completed", "aborted"];
  var LIVE = ["running", "paused"];
  var ACTIVE = ["offered", "downloading", "verified", "installed", "trial"];

  function readJSON(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function sum(row, states) {
    return states.reduce(function (n, s) { return n + (row[s] || 0); }, 0);
  }

  function setText(scope, selector, text) {
    scope.querySelectorAll(selector).forEach(function (el) { el.textContent = text; });
  }

  /* Pause asks why; the answer travels in the form's hidden "reason" field. */
  function initPrompt() {
    document.querySelectorAll("form[data-prompt]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        var answer = window.prompt(form.getAttribute("data-prompt"), "");
        if (answer === null) { event.preventDefault(); return; }
        form.querySelector("input[name=reason]").value = answer;
      });
    });
  }

  /* Once the form changes, the preview no longer describes it: block "create" until previewed
     again (the server checks the same thing with the preview's digest). */
  function initStalePreview() {
    var form = document.querySelector("[data-rollout-form]");
    var go = document.querySelector('[data-action="create-rollout"]');
    var note = document.querySelector("[data-stale-note]");
    if (!form || !go) { return; }
    function stale() {
      go.disabled = true;
      if (note) { note.hidden = false; }
    }
    form.addEventListener("input", stale);
    form.addEventListener("change", stale);
  }

  function initLive() {
    var root = document.querySelector("[data-rollout-live]");
    if (!root || FINAL.indexOf(root.getAttribute("data-state")) >= 0) { return; }
    var segments = readJSON("rollout-segments");
    var tones = readJSON("rollout-tones");
    var reasonText = readJSON("rollout-reason-text") || {};
    var tookStates = readJSON("rollout-took-states");
    var dot = document.querySelector("[data-live-dot]");
    var shownReason = (root.querySelector("[data-paused-reason]") || {}).textContent;

    function paint(container, row) {
      segments.forEach(function (s) {
        var seg = container.querySelector('[data-seg="' + s.key + '"]');
        if (seg) { seg.style.flexGrow = String(sum(row, s.states)); }
      });
    }

    function renderWaves(data, overall) {
      data.progress.forEach(function (w, index) {
        Object.keys(w).forEach(function (k) {
          if (typeof w[k] === "number" && k !== "wave" && k !== "percent") {
            overall[k] = (overall[k] || 0) + w[k];
          }
        });
        var tr = document.querySelector('tr[data-wave="' + w.wave + '"]');
        if (!tr) { return; }
        paint(tr, w);
        setText(tr, '[data-count="devices"]', Fleet.format(w.devices));
        setText(tr, '[data-count="confirmed"]', Fleet.format(w.confirmed));
        setText(tr, '[data-count="active"]', Fleet.format(sum(w, ACTIVE)));
        setText(tr, '[data-count="failed"]', Fleet.format(w.failed));
        var phase = "waiting";
        if (data.state === "completed" || index < data.current_wave) {
          phase = "done";
        } else if (index === data.current_wave && LIVE.indexOf(data.state) >= 0) {
          phase = "current";
        }
        tr.className = "phase-" + phase;
        setText(tr, "[data-phase]", phase);
      });
    }

    function renderTotals(overall) {
      var bar = document.getElementById("rollout-progress");
      paint(bar, overall);
      var total = overall.devices || 0;
      var percent = total ? Math.round(overall.confirmed / total * 100) : 0;
      bar.setAttribute("aria-valuenow", String(percent));
      setText(document, '[data-total="total"]', Fleet.format(total));
      setText(document, '[data-total="active"]', Fleet.format(sum(overall, ACTIVE)));
      setText(document, "[data-total-percent]", String(percent));
      segments.forEach(function (s) {
        setText(document, '[data-total="' + s.key + '"]', Fleet.format(sum(overall, s.states)));
      });
      return sum(overall, tookStates);
    }

    function renderState(data, took) {
      var badge = document.querySelector("[data-rollout-state]");
      badge.className = "badge badge-" + (tones[data.state] || "muted");
      badge.textContent = data.state;
      root.setAttribute("data-state", data.state);
      var last = Math.min(data.current_wave, data.waves.length - 1);
      setText(document, "[data-current-wave]", (last + 1) + " / " + data.waves.length);
      setText(document, "[data-wave-share]", String(data.waves[last]));
      var box = document.querySelector("[data-paused-box]");
      box.hidden = data.state !== "paused";
      if (data.state === "paused" && data.paused_reason !== shownReason) {
        shownReason = data.paused_reason;
        setText(box, "[data-paused-reason]", data.paused_reason || "No reason was given.");
        setText(box, "[data-paused-meta]", "just now");
      }
      document.querySelectorAll("form[data-when]").forEach(function (form) {
        var when = form.getAttribute("data-when");
        form.hidden = when === "took"
          ? data.state === "draft" || !took || form.hasAttribute("data-has-rollback")
          : when.split(" ").indexOf(data.state) < 0;
      });
    }

    function renderFailures(failures) {
      var list = document.querySelector("[data-failure-list]");
      var names = Object.keys(failures).sort(function (a, b) { return failures[b] - failures[a]; });
      list.textContent = "";
      names.forEach(function (name) {
        var li = document.createElement("li");
        var code = document.createElement("code");
        code.textContent = name;
        var count = document.createElement("strong");
        count.textContent = Fleet.format(failures[name]);
        li.appendChild(code);
        li.appendChild(document.createTextNode(" "));
        li.appendChild(count);
        if (reasonText[name]) {
          var text = document.createElement("span");
          text.className = "dim";
          text.textContent = reasonText[name];
          li.appendChild(document.createTextNode(" "));
          li.appendChild(text);
        }
        list.appendChild(li);
      });
      document.querySelector("[data-no-failures]").hidden = names.length > 0;
    }

    function render(data) {
      var overall = {};
      renderWaves(data, overall);
      renderState(data, renderTotals(overall));
      renderFailures(data.failures || {});
    }

    var stop = Fleet.every(1500, function () {
      Fleet.getJSON(root.getAttribute("data-url")).then(function (data) {
        render(data);
        if (dot) { dot.classList.remove("is-stale"); }
        if (FINAL.indexOf(data.state) >= 0) { stop(); }
      }).catch(function () {
        if (dot) { dot.classList.add("is-stale"); }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    initPrompt();
    initStalePreview();
    initLive();
  });
})();
