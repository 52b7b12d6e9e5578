/* Models pages: switch the upload form between .tflite and Keras, and follow conversion jobs
   by polling the model-version API until the job is done (then show the report). */
(function () {
  "use strict";

  function initSourceSwitch() {
    var fieldset = document.querySelector("[data-source-switch]");
    if (!fieldset) { return; }
    var form = fieldset.closest("form");
    function sync() {
      var chosen = form.querySelector("input[name=source]:checked").value;
      form.querySelectorAll("[data-source]").forEach(function (part) {
        part.hidden = part.getAttribute("data-source") !== chosen;
      });
    }
    fieldset.addEventListener("change", sync);
    // After a refused Keras upload, reopen on the Keras side.
    if (form.querySelector('[data-source="keras"] .error')) {
      form.querySelector('input[value="keras"]').checked = true;
    }
    sync();
  }

  function initPolling() {
    document.querySelectorAll("[data-poll-version]").forEach(function (box) {
      var url = box.getAttribute("data-poll-version");
      var stop = window.Fleet.every(1500, function () {
        window.Fleet.getJSON(url).then(function (mv) {
          var job = mv.conversion || {};
          var percent = Math.round((job.progress || 0) * 100);
          var bar = box.querySelector(".progress-bar");
          if (bar) { bar.style.width = percent + "%"; }
          var set = function (sel, text) { var n = box.querySelector(sel); if (n && text !== undefined) { n.textContent = text; } };
          set("[data-job-state]", job.state);
          set("[data-job-percent]", percent + "%");
          set("[data-job-message]", job.message || "");
          if (mv.status !== "converting") {
            stop();
            window.location.reload();
          }
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    initSourceSwitch();
    initPolling();
  });
})();
