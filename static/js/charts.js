// Gearman HQ: the charts of one queue, drawn with uPlot (static/vendor/uplot).
//
// The data is embedded by the server (<script type="application/json" id="queue-stats">,
// shape of GET /api/v1/queues/<function>/stats/). When the live fragment is re-fetched
// (static/js/live.js), the chart containers are kept (hx-preserve) and only get new data,
// so a hovered cursor survives a refresh. Empty states are server-rendered: a card whose
// series has nothing to draw has the class "is-empty" and hides its chart.
(function () {
  "use strict";

  var HEIGHT = 210;
  var SYNC = "hq-queue";
  var charts = {}; // name -> uPlot

  var C = {
    slate: "#64748b", violet: "#8b5cf6", green: "#16a34a", red: "#dc2626",
    blue: "#2563eb", sky: "#93c5fd", navy: "#1e3a8a", amber: "#d97706",
  };

  function fmtCount(v) {
    if (v == null) return "—";
    var a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return Math.round(v * 100) / 100 + "";
  }

  // Same steps as the duration_ms template filter: 12 ms, 3.4 s, 42 s, 2 min, 1.5 h.
  function fmtMs(v) {
    if (v == null) return "—";
    if (v < 1) return v.toFixed(2).replace(/\.?0+$/, "") + " ms";
    if (v < 1000) return Math.round(v) + " ms";
    var s = v / 1000;
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 60) return Math.round(s) + " s";
    if (s < 3600) return (s / 60).toFixed(s < 600 ? 1 : 0).replace(/\.0$/, "") + " min";
    if (s < 86400) return (s / 3600).toFixed(1).replace(/\.0$/, "") + " h";
    return (s / 86400).toFixed(1).replace(/\.0$/, "") + " d";
  }

  function fmtPct(v) {
    if (v == null) return "—";
    return (v >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1)) + " %";
  }

  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  function pad(n) { return n < 10 ? "0" + n : "" + n; }

  // Time ticks in UTC, 24-hour: "14:30", with the date under the first tick of each day;
  // day-sized steps show only the date ("Nov 24").
  function timeTicks(u, splits, axisIdx, space, incr) {
    var lastDay = null;
    return splits.map(function (ts) {
      var d = new Date(ts * 1000);
      var day = MONTHS[d.getUTCMonth()] + " " + d.getUTCDate();
      var hm = pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
      var label = incr >= 86400 ? day : (day !== lastDay ? hm + "\n" + day : hm);
      lastDay = day;
      return label;
    });
  }

  // Counts tick at whole numbers only.
  var COUNT_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2.5e3, 5e3,
    1e4, 2e4, 2.5e4, 5e4, 1e5, 2e5, 2.5e5, 5e5, 1e6, 2e6, 5e6, 1e7];

  function line(label, key, color, extra) {
    var s = { label: label, key: key, stroke: color, width: 2, spanGaps: false };
    for (var k in extra || {}) s[k] = extra[k];
    return s;
  }

  // chart name -> its series (key: field of a point; scale: multiply the value) and units
  var SPECS = {
    depth: {
      fmt: fmtCount,
      incrs: COUNT_INCRS,
      series: [line("Queued", "queue_depth", C.slate, { fill: "rgba(100,116,139,.12)" })],
    },
    throughput: {
      fmt: fmtCount,
      incrs: COUNT_INCRS,
      series: [
        line("Submitted", "submitted", C.violet, { width: 1.5, dash: [5, 3] }),
        line("Completed", "completed", C.green, { fill: "rgba(22,163,74,.08)" }),
        line("Failed", "failed", C.red, { fill: "rgba(220,38,38,.10)" }),
      ],
    },
    runtime: {
      fmt: fmtMs,
      series: [
        line("p50", "runtime_p50_ms", C.sky),
        line("p95", "runtime_p95_ms", C.blue),
        line("p99", "runtime_p99_ms", C.navy, { width: 1.5, dash: [4, 3] }),
      ],
    },
    wait: {
      fmt: fmtMs,
      series: [line("Wait p95", "wait_p95_ms", C.amber, { fill: "rgba(217,119,6,.10)" })],
    },
    failure: {
      fmt: fmtPct,
      max: 100,
      series: [line("Failure rate", "failure_rate", C.red, { scale: 100, fill: "rgba(220,38,38,.10)" })],
    },
  };

  function readStats() {
    var el = document.getElementById("queue-stats");
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  // uPlot wants columns: [xs, ys1, ys2, ...] with x in unix seconds.
  function columns(spec, points) {
    var xs = points.map(function (p) { return Date.parse(p.t) / 1000; });
    var cols = [xs];
    spec.series.forEach(function (s) {
      cols.push(points.map(function (p) {
        var v = p[s.key];
        return v == null ? null : v * (s.scale || 1);
      }));
    });
    return cols;
  }

  function options(name, spec, width) {
    var stepped = name === "throughput" ? uPlot.paths.stepped({ align: 1 }) : undefined;
    var series = [{
      label: "Time (UTC)",
      value: "{YYYY}-{MM}-{DD} {HH}:{mm}",
    }].concat(spec.series.map(function (s) {
      return {
        label: s.label, stroke: s.stroke, width: s.width, fill: s.fill, dash: s.dash,
        spanGaps: s.spanGaps, paths: stepped,
        points: { size: 5, show: fewPoints },
        value: function (u, v) { return spec.fmt(v); },
      };
    }));
    return {
      width: width, height: HEIGHT,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); },
      cursor: { sync: { key: SYNC }, drag: { x: false, y: false } },
      legend: { live: true },
      scales: {
        x: { time: true },
        y: {
          range: function (u, min, max) {
            var top = spec.max ? Math.min(spec.max, Math.max(max * 1.15, 1)) : Math.max(max * 1.15, 1);
            return [0, top];
          },
        },
      },
      axes: [
        {
          stroke: "#5d6978", grid: { stroke: "#eef1f4" }, ticks: { stroke: "#dfe3e8" },
          space: 64, values: timeTicks,
        },
        {
          stroke: "#5d6978", grid: { stroke: "#eef1f4" }, ticks: { show: false }, size: 62,
          incrs: spec.incrs, values: function (u, vals) { return vals.map(spec.fmt); },
        },
      ],
      series: series,
      hooks: { ready: [showLatest], setData: [showLatest], setCursor: [showLatest] },
    };
  }

  // Dots on the line only when there are few points (a lone point is otherwise invisible).
  function fewPoints(u, seriesIdx) {
    var n = 0;
    u.data[seriesIdx].forEach(function (v) { if (v != null) n++; });
    return n <= 24;
  }

  // Without a hovering cursor the legend shows the newest point that has a value, not
  // blanks (the current bucket is empty for the first seconds of each minute).
  function showLatest(u) {
    if (u.cursor.idx != null) return;
    var xs = u.data[0];
    if (!xs || !xs.length) return;
    u.setLegend({ idx: newestWithData(u) });
  }

  function newestWithData(u) {
    for (var i = u.data[0].length - 1; i > 0; i--) {
      for (var s = 1; s < u.data.length; s++) {
        if (u.data[s][i] != null) return i;
      }
    }
    return u.data[0].length - 1;
  }

  function widthOf(el) {
    return Math.max(Math.floor(el.getBoundingClientRect().width), 0);
  }

  function draw() {
    if (typeof uPlot === "undefined") return;
    var stats = readStats();
    if (!stats) return;
    Object.keys(SPECS).forEach(function (name) {
      var el = document.querySelector('[data-chart="' + name + '"]');
      var chart = charts[name];
      if (chart && (!el || chart.root.parentNode !== el)) { // container gone: start over
        chart.destroy();
        chart = charts[name] = null;
      }
      if (!el) return;
      var data = columns(SPECS[name], stats.points);
      if (chart) {
        chart.setData(data);
        return;
      }
      var width = widthOf(el);
      if (width === 0) return; // hidden (empty state): drawn when data arrives
      charts[name] = new uPlot(options(name, SPECS[name], width), data, el);
      el.setAttribute("data-drawn", "true");
      observe(el);
    });
  }

  var observer = typeof ResizeObserver === "undefined" ? null : new ResizeObserver(function (entries) {
    entries.forEach(function (entry) {
      var name = entry.target.getAttribute("data-chart");
      var chart = charts[name];
      var width = widthOf(entry.target);
      if (chart && width > 0 && Math.abs(chart.width - width) > 1) {
        chart.setSize({ width: width, height: HEIGHT });
      }
    });
  });

  function observe(el) {
    if (observer) observer.observe(el);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
  // The live fragment was swapped in: new numbers for the kept charts (or first charts).
  document.addEventListener("htmx:afterSettle", function (event) {
    if (event.target && event.target.querySelector && event.target.querySelector("#queue-stats")) {
      draw();
    }
  });

  window.hqCharts = charts; // for tests and the curious: the uPlot instances by name
})();
