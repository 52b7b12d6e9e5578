/* Small SVG charts for the console: a time series (line or bars) and horizontal bars.
   No library: the console ships every asset itself. Charts redraw when their box resizes. */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var HEIGHT = 220;
  var M = { top: 12, right: 14, bottom: 26, left: 52 };

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function title(node, text) { el("title", {}, node).textContent = text; }

  /* Round a maximum up to 1, 2 or 5 times a power of ten, so ticks read well. */
  function niceMax(value) {
    if (!(value > 0)) { return 1; }
    var power = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * power >= value) { return steps[i] * power; }
    }
    return 10 * power;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined) { return "—"; }
    var abs = Math.abs(value);
    if (abs >= 1e6) { return (value / 1e6).toFixed(1) + "M"; }
    if (abs >= 1e4) { return (value / 1e3).toFixed(1) + "k"; }
    return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 2 : digits });
  }

  /* Pick a tick step (seconds) giving at most maxTicks ticks on whole minutes/hours/days. */
  var STEPS = [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];
  function timeStep(spanS, maxTicks) {
    for (var i = 0; i < STEPS.length; i++) {
      if (spanS / STEPS[i] <= maxTicks) { return STEPS[i]; }
    }
    return STEPS[STEPS.length - 1] * Math.ceil(spanS / maxTicks / STEPS[STEPS.length - 1]);
  }

  /* Enough decimals that neighbouring ticks differ (0.0125 steps: 4; never "0, 0, 0"). */
  function tickDigits(step) {
    if (!(step > 0) || (step >= 1 && Math.round(step) === step)) { return 0; }
    return Math.min(6, Math.max(1, Math.ceil(-Math.log10(step)) + 1));
  }

  function timeLabel(date, spanS) {
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    var hm = pad(date.getUTCHours()) + ":" + pad(date.getUTCMinutes());
    if (spanS <= 36 * 3600) { return hm; }
    return pad(date.getUTCMonth() + 1) + "-" + pad(date.getUTCDate()) + (spanS <= 8 * 86400 ? " " + hm : "");
  }

  function empty(container, text) {
    container.innerHTML = "";
    var box = document.createElement("div");
    box.className = "chart-empty";
    box.textContent = text || "No data in this range";
    container.appendChild(box);
  }

  function remember(container, draw) {
    container._fleetDraw = draw;
    draw();
    if (!container._fleetObserved && window.ResizeObserver) {
      var last = container.clientWidth;
      new ResizeObserver(function () {
        if (Math.abs(container.clientWidth - last) > 4) { last = container.clientWidth; container._fleetDraw(); }
      }).observe(container);
      container._fleetObserved = true;
    }
  }

  /* Draw a time series: points [{t: ISO, <y>: number|null}], opts {y, unit, kind, digits,
     transform}. Each point becomes a circle (or bar) with a tooltip. */
  function series(container, points, opts) {
    opts = opts || {};
    var values = (points || []).map(function (p) {
      var v = p[opts.y];
      if (v !== null && v !== undefined && opts.transform) { v = opts.transform(v); }
      return { t: new Date(p.t), v: v };
    }).filter(function (p) { return p.v !== null && p.v !== undefined; });
    if (!values.length) { return empty(container, opts.emptyText); }
    remember(container, function () {
      container.innerHTML = "";
      var width = Math.max(container.clientWidth || 600, 260);
      var w = width - M.left - M.right, h = HEIGHT - M.top - M.bottom;
      var svg = el("svg", { viewBox: "0 0 " + width + " " + HEIGHT, role: "img",
        "aria-label": opts.label || "chart", "data-points": values.length }, container);
      var t0 = opts.since ? new Date(opts.since).getTime() : values[0].t.getTime();
      var t1 = opts.until ? new Date(opts.until).getTime() : values[values.length - 1].t.getTime();
      if (t1 <= t0) { t1 = t0 + 60000; }
      var ymax = niceMax(Math.max.apply(null, values.map(function (p) { return p.v; })) * 1.05);
      // A bounded quantity (a percentage) never gets an axis past its bound.
      if (opts.yCap && ymax > opts.yCap) { ymax = opts.yCap; }
      var x = function (t) { return M.left + (t - t0) / (t1 - t0) * w; };
      var y = function (v) { return M.top + h - v / ymax * h; };
      for (var i = 0; i <= 4; i++) {
        var gy = M.top + h - i / 4 * h;
        el("line", { x1: M.left, x2: M.left + w, y1: gy, y2: gy, "class": i ? "grid-line" : "axis" }, svg);
        el("text", { x: M.left - 8, y: gy + 4, "text-anchor": "end", "class": "tick" }, svg)
          .textContent = fmt(ymax * i / 4, tickDigits(ymax / 4)) + (opts.tickUnit || "");
      }
      var spanS = (t1 - t0) / 1000;
      var step = timeStep(spanS, Math.max(2, Math.min(7, Math.floor(w / 90))));
      for (var tt = Math.ceil(t0 / 1000 / step) * step * 1000; tt <= t1; tt += step * 1000) {
        el("line", { x1: x(tt), x2: x(tt), y1: M.top + h, y2: M.top + h + 4, "class": "axis" }, svg);
        el("text", { x: x(tt), y: HEIGHT - 6, "text-anchor": "middle", "class": "tick" }, svg)
          .textContent = timeLabel(new Date(tt), spanS);
      }
      var unit = opts.unit ? " " + opts.unit : "";
      if (opts.kind === "bars") {
        var bw = Math.max(2, Math.min(18, w / Math.max(values.length, (t1 - t0) / ((opts.bucket || 60) * 1000)) * 0.7));
        values.forEach(function (p) {
          var r = el("rect", { x: x(p.t.getTime()) - bw / 2, y: y(p.v), width: bw,
            height: Math.max(M.top + h - y(p.v), 1), "class": "bar pt" }, svg);
          title(r, p.t.toISOString().slice(0, 16).replace("T", " ") + " UTC: " + fmt(p.v, opts.digits) + unit);
        });
        return;
      }
      var d = values.map(function (p, i2) { return (i2 ? "L" : "M") + x(p.t.getTime()).toFixed(1) + "," + y(p.v).toFixed(1); }).join("");
      el("path", { d: d + "L" + x(values[values.length - 1].t.getTime()).toFixed(1) + "," + (M.top + h) +
        "L" + x(values[0].t.getTime()).toFixed(1) + "," + (M.top + h) + "Z", "class": "area" }, svg);
      el("path", { d: d, "class": "line" }, svg);
      var radius = values.length > 150 ? 1.6 : 2.6;
      values.forEach(function (p) {
        var c = el("circle", { cx: x(p.t.getTime()), cy: y(p.v), r: radius, "class": "pt" }, svg);
        title(c, p.t.toISOString().slice(0, 16).replace("T", " ") + " UTC: " + fmt(p.v, opts.digits) + unit);
      });
    });
  }

  /* Draw horizontal bars: rows [{name, value, valueB?}]; two values make a grouped pair. */
  function bars(container, rows, opts) {
    opts = opts || {};
    if (!rows || !rows.length) { return empty(container, opts.emptyText); }
    remember(container, function () {
      container.innerHTML = "";
      var width = Math.max(container.clientWidth || 600, 260);
      var paired = rows.some(function (r) { return r.valueB !== undefined; });
      // Few rows get taller bars so a short list still fills the card.
      var rowH = paired ? 34 : Math.max(26, Math.min(40, Math.floor(180 / rows.length))), labelW = Math.min(140, width * 0.32), valueW = 64;
      var legendH = paired ? 22 : 0;
      var height = legendH + rows.length * rowH + 6;
      var svg = el("svg", { viewBox: "0 0 " + width + " " + height, role: "img",
        "aria-label": opts.label || "bars", "data-points": rows.length }, container);
      var max = Math.max.apply(null, rows.map(function (r) { return Math.max(r.value || 0, r.valueB || 0); })) || 1;
      var w = width - labelW - valueW - 10;
      var f = opts.format || function (v) { return fmt(v); };
      if (paired) {
        [["bar", opts.nameA || "A", 0], ["bar bar-b", opts.nameB || "B", 120]].forEach(function (l) {
          el("rect", { x: labelW + l[2], y: 4, width: 10, height: 10, rx: 2, "class": l[0] }, svg);
          el("text", { x: labelW + l[2] + 15, y: 13, "class": "legend" }, svg).textContent = l[1];
        });
      }
      rows.forEach(function (r, i) {
        var top = legendH + i * rowH;
        var barH = paired ? 12 : rowH - 11;
        el("text", { x: labelW - 8, y: top + (paired ? 20 : 5 + barH / 2 + 4), "text-anchor": "end", "class": "bar-label" }, svg)
          .textContent = String(r.name).length > 18 ? String(r.name).slice(0, 17) + "…" : r.name;
        var series2 = paired ? [["value", "bar", 4], ["valueB", "bar bar-b", 18]] : [["value", "bar", 5]];
        series2.forEach(function (s) {
          var v = r[s[0]] || 0;
          var rect = el("rect", { x: labelW, y: top + s[2], width: Math.max(v / max * w, 1),
            height: barH, rx: 3, "class": s[1] + " pt" }, svg);
          title(rect, r.name + ": " + f(v));
          el("text", { x: labelW + Math.max(v / max * w, 1) + 6, y: top + s[2] + barH / 2 + 4,
            "class": "tick" }, svg).textContent = f(v);
        });
      });
    });
  }

  window.FleetCharts = { series: series, bars: bars, format: fmt };

  /* Charts declared in markup: <div data-line-chart="json-script-id" data-field="events"
     data-src="/api/..." data-span-s="86400" data-refresh-s="30">. */
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-line-chart]").forEach(function (box) {
      var script = document.getElementById(box.getAttribute("data-line-chart"));
      var opts = { y: box.getAttribute("data-field"), unit: box.getAttribute("data-unit"),
        kind: box.getAttribute("data-kind"), label: box.getAttribute("data-unit"),
        bucket: Number(box.getAttribute("data-bucket")) || 60 };
      var spanS = Number(box.getAttribute("data-span-s")) || 86400;
      function draw(points) {
        var until = new Date();
        series(box, points, Object.assign({ since: new Date(until - spanS * 1000), until: until }, opts));
      }
      draw(script ? JSON.parse(script.textContent) : []);
      var src = box.getAttribute("data-src"), refresh = Number(box.getAttribute("data-refresh-s"));
      if (src && refresh && window.Fleet) {
        window.Fleet.every(refresh * 1000, function () {
          var until = new Date(), since = new Date(until - spanS * 1000);
          window.Fleet.getJSON(src + "&" + window.Fleet.query({ since: since.toISOString(), until: until.toISOString() }))
            .then(function (data) { draw(data.points); });
        });
      }
    });
  });
})();
