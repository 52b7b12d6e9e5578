/* Telemetry page: draw the charts from the data the server embedded, then keep a relative
   range ("last 24 hours") current by polling the telemetry API with the same selection. */
(function () {
  "use strict";

  var C = window.FleetCharts;

  function labelName(names, index) {
    return index >= 0 && index < names.length ? names[index] : "class " + index;
  }

  /* Latency reads in µs below a millisecond, else in ms: the same unit on axis and card. */
  function latencyUnit(points) {
    var max = 0;
    (points || []).forEach(function (p) { if (p.mean_latency_ms > max) { max = p.mean_latency_ms; } });
    return max < 1 ? { unit: "µs", factor: 1000, digits: 0 } : { unit: "ms", factor: 1, digits: 2 };
  }

  function formatLatency(ms) {
    if (ms === null || ms === undefined) { return "—"; }
    if (ms < 1) { return Math.round(ms * 1000) + " µs"; }
    return (ms < 100 ? ms.toFixed(2) : Math.round(ms).toLocaleString("en-US")) + " ms";
  }

  function drawAll(data, since, until) {
    var range = { since: since, until: until, bucket: data.bucket };
    var box = function (name) { return document.querySelector('[data-chart="' + name + '"]'); };
    C.series(box("rate"), data.series, Object.assign({ y: "events_per_s", unit: "events/s", label: "event rate" }, range));
    // Confidence in %, as on the card: 0..255 on the wire, an axis capped at 100 %.
    C.series(box("score"), data.series, Object.assign({ y: "mean_score", unit: "%", tickUnit: "%", digits: 1,
      yCap: 100, label: "mean confidence", transform: function (s) { return s / 255 * 100; } }, range));
    var lat = latencyUnit(data.series);
    C.series(box("latency"), data.series, Object.assign({ y: "mean_latency_ms", unit: lat.unit,
      tickUnit: " " + lat.unit, digits: lat.digits, label: "mean latency (" + lat.unit + ")",
      transform: function (ms) { return ms * lat.factor; } }, range));
    C.bars(box("labels"), data.labels.map(function (r) {
      return { name: labelName(data.label_names, r.label), value: r.count };
    }), { label: "label distribution" });
    if (data.compare && box("compare")) {
      var a = {}, b = {}, keys = {};
      data.compare.a.labels.forEach(function (r) { a[r.label] = r.share; keys[r.label] = 1; });
      data.compare.b.labels.forEach(function (r) { b[r.label] = r.share; keys[r.label] = 1; });
      C.bars(box("compare"), Object.keys(keys).map(Number).sort(function (x, y) { return x - y; }).map(function (k) {
        return { name: labelName(data.label_names, k), value: a[k] || 0, valueB: b[k] || 0 };
      }), { nameA: "version A", nameB: "version B", label: "label share by version",
        format: function (v) { return (v * 100).toFixed(1) + "%"; } });
    }
  }

  function updateSummary(summary) {
    var digits = { events_per_s: 2 };
    document.querySelectorAll("[data-summary]").forEach(function (node) {
      var key = node.getAttribute("data-summary"), value = summary[key];
      if (key === "mean_score") {
        node.textContent = value === null ? "—" : (value / 255 * 100).toFixed(1) + "%";
      } else if (key === "mean_latency_ms") {
        node.textContent = formatLatency(value);
      } else {
        node.textContent = window.Fleet.format(value, digits[key] || 0);
      }
    });
  }

  function initCustomRange() {
    var select = document.getElementById("id_range");
    var custom = document.querySelector("[data-custom-range]");
    if (!select || !custom) { return; }
    var sync = function () { custom.classList.toggle("is-hidden", select.value !== "custom"); };
    select.addEventListener("change", sync);
    sync();
  }

  document.addEventListener("DOMContentLoaded", function () {
    initCustomRange();
    var script = document.getElementById("telemetry-data");
    if (!script) { return; }
    var data = JSON.parse(script.textContent);
    var until = new Date(), since = new Date(until - data.span_s * 1000);
    if (!data.live) {
      var points = data.series;
      since = points.length ? null : since;
      until = points.length ? null : until;
    }
    drawAll(data, since, until);
    if (!data.live) { return; }
    window.Fleet.every(data.refresh_s * 1000, function () {
      var end = new Date(), start = new Date(end - data.span_s * 1000);
      var q = window.Fleet.query(Object.assign({ since: start.toISOString(), until: end.toISOString(),
        bucket: data.bucket }, data.params));
      Promise.all([
        window.Fleet.getJSON(data.api.series + "?" + q),
        window.Fleet.getJSON(data.api.labels + "?" + q),
        window.Fleet.getJSON(data.api.summary + "?" + q)
      ]).then(function (answers) {
        drawAll(Object.assign({}, data, { series: answers[0].points, labels: answers[1].labels }), start, end);
        updateSummary(answers[2]);
      }).catch(function () {
        document.querySelectorAll(".live-dot").forEach(function (d) { d.classList.add("is-stale"); });
      });
    });
  });
})();
