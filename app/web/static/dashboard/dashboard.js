/* Renum's health dashboard (/health/dashboard): no framework, no build step.
 *
 * Logs in with the API's own token flow (POST /api/v1/auth/token; the tokens stay in this
 * tab's sessionStorage), then reads the admin-only operations: the monitor's snapshot, the
 * history of the charted figures, the dependency report, and the live stream
 * GET /api/v1/ops/monitor/stream. EventSource cannot send an Authorization header, so the
 * stream is read with fetch() and its Server-Sent Events frames are parsed here. Everything
 * is drawn with textContent (never innerHTML): the data is the server's, but route names and
 * messages may come from anyone's requests.
 */
(function () {
  "use strict";

  var API = "/api/v1";
  var STORE = "renum.dashboard.tokens";
  var MAX_POINTS = 20000;
  var GAUGES = [
    { figure: "host_cpu_percent", title: "CPU", extra: "process_cpu_percent", extraLabel: "this process" },
    { figure: "host_memory_used_percent", title: "Memory", extra: "process_rss_bytes", extraLabel: "this process" },
    { figure: "disk_used_percent", title: "Disk", extra: "disk_free_bytes", extraLabel: "free" },
    { figure: "loop_lag_ms", title: "Event-loop lag" },
  ];
  var STATUS_TEXT = { pass: "pass", warn: "warn", fail: "fail" };

  var state = {
    tokens: null,
    snapshot: null,
    pid: null,
    sort: { key: "route", dir: 1 },
    charts: {},
    series: {},
    controller: null,
    retryMs: 2000,
    running: false,
  };

  function $(id) { return document.getElementById(id); }

  // Live regions announce changes: leave an unchanged text alone.
  function setText(node, text) { if (node.textContent !== text) node.textContent = text; }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      if (name === "text") node.textContent = attrs[name];
      else if (name === "className") node.className = attrs[name];
      else node.setAttribute(name, attrs[name]);
    });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  // ---- formatting ------------------------------------------------------------------------

  function number(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return Number(value).toLocaleString("en", { maximumFractionDigits: digits === undefined ? 1 : digits });
  }

  function bytes(value) {
    if (value === null || value === undefined) return "–";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return number(value, i === 0 ? 0 : 1) + " " + units[i];
  }

  function withUnit(value, unit) {
    if (value === null || value === undefined) return "–";
    if (unit === "bytes") return bytes(value);
    if (unit === "%") return number(value, 1) + " %";
    if (unit === "ms") return number(value, 1) + " ms";
    return number(value, 0);
  }

  function latency(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds >= 1) return number(seconds, 2) + " s";
    return number(seconds * 1000, 1) + " ms";
  }

  function percent(ratio) { return number(ratio * 100, 2) + " %"; }

  function clock(unixSeconds) {
    return new Date(unixSeconds * 1000).toLocaleTimeString("en-GB", { hour12: false });
  }

  // ---- the API -----------------------------------------------------------------------------

  function HttpError(status, problem) {
    this.status = status;
    this.problem = problem || {};
    this.message = (problem && (problem.detail || problem.title)) || "HTTP " + status;
  }

  function saveTokens(pair) {
    state.tokens = pair ? { access: pair.access_token, refresh: pair.refresh_token } : null;
    try {
      if (state.tokens) sessionStorage.setItem(STORE, JSON.stringify(state.tokens));
      else sessionStorage.removeItem(STORE);
    } catch (ignored) { /* storage disabled: the tokens live in memory only */ }
  }

  function loadTokens() {
    try { return JSON.parse(sessionStorage.getItem(STORE) || "null"); } catch (ignored) { return null; }
  }

  async function problemOf(response) {
    try { return await response.json(); } catch (ignored) { return null; }
  }

  // One refresh at a time: parallel requests that got 401 share it (a refresh token is
  // single-use; presenting it twice would end the session).
  var refreshing = null;

  async function exchangeRefreshToken() {
    if (!state.tokens || !state.tokens.refresh) return false;
    var response = await fetch(API + "/auth/refresh", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: state.tokens.refresh }),
    });
    if (!response.ok) return false;
    saveTokens(await response.json());
    return true;
  }

  function refreshTokens(usedAccess) {
    if (state.tokens && state.tokens.access !== usedAccess) return Promise.resolve(true);
    if (!refreshing) {
      refreshing = exchangeRefreshToken().catch(function () { return false; });
      refreshing.then(function () { refreshing = null; });
    }
    return refreshing;
  }

  // fetch() with the access token; one refresh on 401; HttpError on other failures unless
  // `accept` lists the status (the dependency report answers 503 with a body).
  async function api(path, options, accept) {
    options = options || {};
    for (var attempt = 0; attempt < 2; attempt += 1) {
      var headers = Object.assign({}, options.headers || {});
      var used = state.tokens ? state.tokens.access : null;
      if (used) headers.Authorization = "Bearer " + used;
      var response = await fetch(path, Object.assign({}, options, { headers: headers }));
      if (response.status === 401 && attempt === 0 && (await refreshTokens(used))) continue;
      if (response.ok || (accept && accept.indexOf(response.status) >= 0)) return response;
      throw new HttpError(response.status, await problemOf(response));
    }
    throw new HttpError(401, null);
  }

  // ---- logging in and out --------------------------------------------------------------------

  function showLogin(message) {
    stopStream();
    $("main").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    setConnection("Not connected");
  }

  // End the session the tokens belong to (best effort: it expires anyway).
  function revoke(tokens) {
    if (!tokens || !tokens.refresh) return;
    fetch(API + "/auth/logout", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + tokens.access },
      body: JSON.stringify({ refresh_token: tokens.refresh }),
    }).catch(function () { /* offline: nothing to do */ });
  }

  function refused(error) {
    if (error.status === 403) {
      revoke(state.tokens);  // a session the dashboard cannot use
      saveTokens(null);
      showLogin("Refused: this dashboard is for platform admins only. " +
        "Log in with a platform admin's account.");
      return true;
    }
    if (error.status === 401) {
      saveTokens(null);
      showLogin("Your session has ended: log in again.");
      return true;
    }
    return false;
  }

  async function login(event) {
    event.preventDefault();
    var email = $("email").value.trim();
    var password = $("password").value;
    if (!email || !password) {
      $("login-error").textContent = "Enter your email and password.";
      return;
    }
    $("login-error").textContent = "Logging in…";
    var response = await fetch(API + "/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ username: email, password: password }),
    });
    if (!response.ok) {
      var problem = await problemOf(response);
      $("login-error").textContent = response.status === 401
        ? "Wrong email or password."
        : "Could not log in: " + ((problem && (problem.detail || problem.title)) || response.status);
      return;
    }
    saveTokens(await response.json());
    $("password").value = "";
    await start();
  }

  function logout() {
    revoke(state.tokens);
    saveTokens(null);
    showLogin("Logged out.");
  }

  async function start() {
    $("login-error").textContent = "";
    try {
      var snapshot = await (await api(API + "/ops/monitor")).json();
      $("login").hidden = true;
      $("main").hidden = false;
      $("logout").hidden = false;
      render(snapshot);
      await Promise.all([loadDependencies(), loadHistory(snapshot)]);
      $("main").focus();
      startStream();
    } catch (error) {
      if (!refused(error)) showLogin("Could not load the dashboard: " + error.message);
    }
  }

  // ---- dependencies ------------------------------------------------------------------------

  async function loadDependencies() {
    var response = await api("/health/dependencies", {}, [503]);
    renderDependencies(await response.json());
  }

  function statusPill(status) {
    var pill = el("span", { className: "pill status-" + status, text: STATUS_TEXT[status] || status });
    return pill;
  }

  function renderDependencies(report) {
    var overall = $("overall");
    if (!report) {
      overall.className = "status-badge";
      setText(overall, "Status: unknown (the health capability is switched off)");
      $("deps-summary").textContent = "No dependency report: the health capability is switched off.";
      return;
    }
    overall.className = "status-badge status-" + report.status;
    setText(overall, "Status: " + (STATUS_TEXT[report.status] || report.status));
    var body = $("deps-table").tBodies[0];
    var rows = [];
    Object.keys(report.checks || {}).sort().forEach(function (key) {
      report.checks[key].forEach(function (check) {
        var value = check.observedValue;
        var observed = value === undefined || value === null ? "–"
          : (typeof value === "number" ? number(value, 2) : String(value)) +
            (check.observedUnit ? " " + check.observedUnit : "");
        var output = check.output || "";
        if (check.fix) output += (output ? " — " : "") + "Fix: " + check.fix;
        rows.push(el("tr", { "data-check": key, "data-status": check.status }, [
          el("th", { scope: "row", text: key }),
          el("td", { "data-label": "Component", text: check.componentId || "–" }),
          el("td", { "data-label": "Status" }, [statusPill(check.status)]),
          el("td", { "data-label": "Critical", text: check.critical ? "yes" : "no" }),
          el("td", { "data-label": "Observed", className: "num", text: observed }),
          el("td", { "data-label": "Output", text: output || "–" }),
        ]));
      });
    });
    // What is not passing first (fail, then warn), each group in the report's order.
    var rank = { fail: 0, warn: 1 };
    rows = rows.map(function (row, i) { return [row, i]; }).sort(function (a, b) {
      var x = rank[a[0].dataset.status] === undefined ? 2 : rank[a[0].dataset.status];
      var y = rank[b[0].dataset.status] === undefined ? 2 : rank[b[0].dataset.status];
      return x - y || a[1] - b[1];
    }).map(function (pair) { return pair[0]; });
    body.replaceChildren.apply(body, rows);
    var failing = rows.length - body.querySelectorAll(".status-pass").length;
    $("deps-summary").textContent = rows.length + " checks, " +
      (failing ? failing + " not passing" : "all passing") +
      (report.output ? ": " + report.output : "") +
      (report.time ? " (checked " + new Date(report.time).toLocaleTimeString("en-GB") + ")" : "");
  }

  // ---- system figures and charts --------------------------------------------------------------

  function buildGauges(snapshot) {
    var holder = $("gauges");
    if (holder.childElementCount) return;
    GAUGES.forEach(function (gauge) {
      var figure = snapshot.system[gauge.figure] || { unit: "", meaning: "" };
      var id = "gauge-" + gauge.figure;
      var card = el("figure", { className: "gauge", id: id, "aria-labelledby": id + "-title" }, [
        el("h3", { id: id + "-title", text: gauge.title }),
        el("p", { className: "value", id: id + "-value", text: "–" }),
        el("div", { className: "meter", "aria-hidden": "true" }, [el("span", { id: id + "-meter" })]),
        el("div", { className: "chart", id: id + "-chart", role: "img", "aria-label": gauge.title + " history" }),
        el("figcaption", { className: "muted", id: id + "-caption", text: figure.meaning }),
      ]);
      holder.appendChild(card);
    });
  }

  function chartWidth(node) { return Math.max(240, Math.floor(node.clientWidth || 300)); }

  function makeChart(gauge, unit, points) {
    var node = $("gauge-" + gauge.figure + "-chart");
    var data = [points.map(function (p) { return p.at; }), points.map(function (p) { return p.value; })];
    state.series[gauge.figure] = data;
    if (state.charts[gauge.figure]) state.charts[gauge.figure].destroy();
    node.replaceChildren();
    var options = {
      width: chartWidth(node),
      height: 160,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { y: unit === "%" ? { range: [0, 100] } : { range: function (u, min, max) { return [0, Math.max(1, max * 1.2)]; } } },
      axes: [
        { stroke: "#4d5562", grid: { stroke: "#e4e7ec" } },
        { stroke: "#4d5562", grid: { stroke: "#e4e7ec" }, size: 56,
          values: function (u, ticks) { return ticks.map(function (t) { return unit === "%" ? t + "%" : number(t, 1); }); } },
      ],
      series: [{}, { label: gauge.title, stroke: "#1747b8", width: 2, fill: "rgba(23,71,184,0.12)", spanGaps: true }],
    };
    state.charts[gauge.figure] = new uPlot(options, data, node);
  }

  async function loadHistory(snapshot) {
    buildGauges(snapshot);
    await Promise.all(GAUGES.map(async function (gauge) {
      var series = await (await api(API + "/ops/monitor/history/" + gauge.figure)).json();
      makeChart(gauge, series.unit, series.points);
    }));
    state.pid = snapshot.pid;
    renderGauges(snapshot);
  }

  function appendPoints(snapshot) {
    GAUGES.forEach(function (gauge) {
      var chart = state.charts[gauge.figure];
      var data = state.series[gauge.figure];
      var figure = snapshot.system[gauge.figure];
      if (!chart || !data || !figure || figure.value === null) return;
      var times = data[0];
      if (times.length && snapshot.at <= times[times.length - 1]) return;
      times.push(snapshot.at);
      data[1].push(figure.value);
      if (times.length > MAX_POINTS) { times.shift(); data[1].shift(); }
      chart.setData(data);
    });
  }

  function renderGauges(snapshot) {
    GAUGES.forEach(function (gauge) {
      var figure = snapshot.system[gauge.figure];
      if (!figure) return;
      var id = "gauge-" + gauge.figure;
      var text = withUnit(figure.value, figure.unit);
      $(id + "-value").textContent = text;
      var fill = figure.unit === "%" ? Math.min(100, Math.max(0, figure.value || 0)) : 0;
      $(id + "-meter").style.width = fill + "%";
      $(id + "-meter").parentNode.hidden = figure.unit !== "%";
      var extra = gauge.extra && snapshot.system[gauge.extra];
      var points = (state.series[gauge.figure] || [[]])[0].length;
      var caption = figure.meaning + ". Latest: " + text + " at " + clock(snapshot.at) +
        (extra ? "; " + gauge.extraLabel + ": " + withUnit(extra.value, extra.unit) : "") +
        "; " + points + " points of history in this process.";
      $(id + "-caption").textContent = caption;
      $(id + "-chart").setAttribute("aria-label", gauge.title + " history chart. " + caption);
    });
    var list = $("figures");
    var rows = [];
    Object.keys(snapshot.system).forEach(function (name) {
      var figure = snapshot.system[name];
      rows.push(el("dt", { text: figure.meaning }));
      rows.push(el("dd", { text: withUnit(figure.value, figure.unit) }));
    });
    list.replaceChildren.apply(list, rows);
  }

  function resizeCharts() {
    Object.keys(state.charts).forEach(function (figure) {
      var node = $("gauge-" + figure + "-chart");
      state.charts[figure].setSize({ width: chartWidth(node), height: 160 });
    });
  }

  // ---- endpoints -----------------------------------------------------------------------------

  function compare(a, b) {
    var key = state.sort.key;
    var x = a[key];
    var y = b[key];
    if (x === y) return a.route < b.route ? -1 : a.route > b.route ? 1 : 0;
    if (x === null || x === undefined) return 1;  // no figure yet: always last
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * state.sort.dir;
  }

  function routeRow(route) {
    var errors = el("td", { className: "num", text: percent(route.error_ratio) });
    if (route.error_ratio > 0.05) errors.appendChild(el("span", { className: "visually-hidden", text: " (high)" }));
    return el("tr", { "data-route": route.method + " " + route.route }, [
      el("td", { text: route.method }),
      el("th", { scope: "row", className: "route", text: route.route }),
      el("td", { className: "num", text: number(route.requests, 0) }),
      el("td", { className: "num", text: number(route.rate_per_second, 2) }),
      errors,
      el("td", { className: "num", text: latency(route.p50_seconds) }),
      el("td", { className: "num", text: latency(route.p95_seconds) }),
      el("td", { className: "num", text: latency(route.p99_seconds) }),
    ]);
  }

  function renderRoutes() {
    var snapshot = state.snapshot;
    if (!snapshot) return;
    var body = $("routes-table").tBodies[0];
    var rows = snapshot.routes.slice().sort(compare).map(routeRow);
    if (!rows.length) rows = [el("tr", {}, [el("td", { colspan: "8", className: "muted", text: "No requests yet." })])];
    body.replaceChildren.apply(body, rows);
    $("routes-summary").textContent = snapshot.routes.length + " endpoints. Rate and errors over the last " +
      number(snapshot.window_seconds, 0) + " s; latency quantiles since the process started.";
    document.querySelectorAll("#routes-table th[aria-sort]").forEach(function (th) {
      var key = th.querySelector("button").dataset.key;
      th.setAttribute("aria-sort", key !== state.sort.key ? "none" : state.sort.dir > 0 ? "ascending" : "descending");
    });
  }

  function sortBy(event) {
    var button = event.target.closest("button[data-key]");
    if (!button) return;
    var key = button.dataset.key;
    if (state.sort.key === key) state.sort.dir = -state.sort.dir;
    else state.sort = { key: key, dir: key === "method" || key === "route" ? 1 : -1 };
    renderRoutes();
  }

  function renderSlowest(snapshot) {
    var list = $("slowest");
    var items = snapshot.slowest.map(function (route) {
      return el("li", {}, [
        el("strong", { text: route.method + " " + route.route }),
        " — p95 " + latency(route.p95_seconds) + ", p99 " + latency(route.p99_seconds) +
          ", " + number(route.requests, 0) + " requests",
      ]);
    });
    if (!items.length) items = [el("li", { className: "muted", text: "No timed requests yet." })];
    list.replaceChildren.apply(list, items);
  }

  // ---- alerts --------------------------------------------------------------------------------

  function alertItem(alert) {
    var labels = Object.keys(alert.labels || {}).map(function (name) {
      return name + "=" + alert.labels[name];
    }).join(", ");
    var since = alert.state === "resolved" ? "resolved " + alert.resolved_at : "since " + alert.started_at;
    var children = [
      el("strong", { text: alert.severity + ", " + alert.state + ": " }),
      alert.message,
      el("span", { className: "muted", text: " (" + alert.rule + (labels ? "; " + labels : "") + "; " + since + ")" }),
    ];
    if (alert.silenced_by && alert.silenced_by.length) children.push(el("span", { className: "badge", text: " silenced" }));
    return el("li", { className: "alert-" + alert.severity }, children);
  }

  function channelItem(channel) {
    var status = channel.failing
      ? "failing: " + channel.last_error + " (" + channel.pending + " waiting, retried with backoff)"
      : channel.last_attempt_at ? "ok, last sent " + channel.last_attempt_at : "nothing sent yet";
    if (channel.dead) status += "; " + channel.dead + " dead";
    return el("li", { className: channel.failing ? "channel-failing" : "" }, [
      el("strong", { text: channel.name + " (" + channel.type + ", " + channel.min_severity + " and up): " }),
      status,
    ]);
  }

  function renderAlerts(snapshot) {
    var holder = $("alerts");
    var alerts = snapshot.alerts;
    if (!alerts) {
      holder.replaceChildren(el("p", { className: "muted", text: "No alert evaluation has been read yet." }));
      return;
    }
    var children = [];
    if (!alerts.evaluating) children.push(el("p", { className: "muted", text: "Rule evaluation is switched off." }));
    children.push(el("p", {
      id: "alerts-evaluated",
      className: "muted",
      text: alerts.evaluated_at
        ? "Rules last evaluated " + alerts.evaluated_at + " by " + alerts.evaluated_by + "."
        : "The rules have not been evaluated yet.",
    }));
    [["Active", alerts.active], ["Recent", alerts.recent]].forEach(function (group) {
      children.push(el("h3", { text: group[0] + " (" + group[1].length + ")" }));
      children.push(group[1].length
        ? el("ul", { className: "plain" }, group[1].map(alertItem))
        : el("p", { className: "muted", text: group[0] === "Active" ? "No active alerts." : "None recently." }));
    });
    children.push(el("h3", { text: "Channels" }));
    children.push(alerts.channels.length
      ? el("ul", { className: "plain", id: "alert-channels" }, alerts.channels.map(channelItem))
      : el("p", { className: "muted", text: "No channel configured: alerts go to the log." }));
    holder.replaceChildren.apply(holder, children);
  }

  // ---- one snapshot ----------------------------------------------------------------------------

  function render(snapshot) {
    state.snapshot = snapshot;
    $("process-note").textContent = "History is kept in memory by each server process: these charts show process " +
      snapshot.pid + " (sampled every " + number(snapshot.interval_seconds, 1) + " s). " +
      "Behind several workers, another process keeps its own history.";
    $("executions-running").textContent = number(snapshot.executions.running, 0);
    $("executions-queued").textContent = number(snapshot.executions.queued, 0);
    renderRoutes();
    renderSlowest(snapshot);
    renderAlerts(snapshot);
    if (state.pid !== null) renderGauges(snapshot);
  }

  async function onSnapshot(snapshot) {
    if (state.pid !== null && snapshot.pid !== state.pid) {
      // Reconnected to another process: its history is another one.
      state.pid = null;
      render(snapshot);
      await loadHistory(snapshot);
    } else {
      appendPoints(snapshot);
      render(snapshot);
    }
    if (snapshot.dependencies !== undefined) renderDependencies(snapshot.dependencies);
    setConnection("Live: updated " + clock(snapshot.at) + " from process " + snapshot.pid);
  }

  // ---- the live stream -------------------------------------------------------------------------

  function setConnection(text) { $("connection").textContent = text; }

  function stopStream() {
    state.running = false;
    if (state.controller) state.controller.abort();
    state.controller = null;
  }

  // One SSE frame: "event:", "data:" (joined by newlines) and "retry:" fields; ":" comments.
  function parseFrame(frame) {
    var event = "message";
    var data = [];
    frame.split("\n").forEach(function (line) {
      if (!line || line.charAt(0) === ":") return;
      var colon = line.indexOf(":");
      var field = colon < 0 ? line : line.slice(0, colon);
      var value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "retry" && /^\d+$/.test(value)) state.retryMs = Number(value);
    });
    return data.length ? { event: event, data: data.join("\n") } : null;
  }

  async function readStream(signal) {
    var response = await api(API + "/ops/monitor/stream", {
      headers: { Accept: "text/event-stream" },
      signal: signal,
      cache: "no-store",
    });
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) return;
      buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n?/g, "\n");
      var end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        var message = parseFrame(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (message && message.event === "snapshot") await onSnapshot(JSON.parse(message.data));
      }
    }
  }

  async function startStream() {
    stopStream();
    state.running = true;
    var failures = 0;
    while (state.running) {
      var controller = new AbortController();
      state.controller = controller;
      setConnection("Connecting…");
      try {
        await readStream(controller.signal);
        failures = 0;
      } catch (error) {
        if (!state.running || controller.signal.aborted) return;
        if (error instanceof HttpError && refused(error)) return;
        failures += 1;
      }
      if (!state.running) return;
      var wait = Math.min(30000, state.retryMs * Math.pow(2, Math.min(failures, 4)));
      setConnection("Disconnected; reconnecting in " + Math.round(wait / 1000) + " s");
      await new Promise(function (resolve) { setTimeout(resolve, wait); });
    }
  }

  // ---- start ----------------------------------------------------------------------------------

  function init() {
    $("login-form").addEventListener("submit", function (event) {
      login(event).catch(function (error) { $("login-error").textContent = "Could not log in: " + error.message; });
    });
    $("logout").addEventListener("click", logout);
    $("routes-table").tHead.addEventListener("click", sortBy);
    var resizeTimer = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(resizeCharts, 150);
    });
    state.tokens = loadTokens();
    if (state.tokens) start();
    else showLogin("");
  }

  if (typeof uPlot === "undefined") {
    document.addEventListener("DOMContentLoaded", function () {
      $("login-error").textContent = "The chart library did not load.";
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
