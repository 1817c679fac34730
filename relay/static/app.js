// crdtstate relay dashboard: polls the relay's JSON views and renders them.
//
// No framework and no build step: the page is served as is by relay/dashboard.py.
// Everything a replica or a writer controls (replica ids, field values, alert text) is
// put in the page with textContent, never parsed as HTML.
//
// URL parameters: ?token=T (sent as a bearer token), ?interval_ms=N (poll period, >= 500).
// The selected namespace is in the hash: #/ns/NAME.
"use strict";

(() => {
  const params = new URLSearchParams(window.location.search);
  const token = params.get("token");
  const intervalMs = Math.max(500, Number(params.get("interval_ms")) || 2000);
  const requestTimeoutMs = 10000;
  const valueCharsMax = 400;
  const logEntriesShown = 5;

  const $ = (id) => document.getElementById(id);

  function selectedFromHash() {
    const match = window.location.hash.match(/^#\/ns\/(.+)$/);
    return match ? decodeURIComponent(match[1]) : null;
  }

  async function getJSON(path) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), requestTimeoutMs);
    try {
      const response = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
      let body = null;
      try {
        body = await response.json();
      } catch (_err) {
        body = null;
      }
      if (!response.ok) {
        const reason = body && body.message ? body.message : response.statusText;
        throw new Error(`HTTP ${response.status}: ${reason}`);
      }
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  // -- formatting (mirrors crdtstate.drift.format_seconds) ----------------------------------

  function formatSeconds(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 10) return `${seconds.toFixed(2).replace(/\.00$/, "")} s`;
    const whole = Math.floor(seconds);
    if (whole < 60) return `${whole} s`;
    const minutes = Math.floor(whole / 60);
    const secs = whole % 60;
    if (minutes < 60) return secs ? `${minutes} min ${secs} s` : `${minutes} min`;
    const hours = Math.floor(minutes / 60);
    const mins = minutes % 60;
    if (hours < 24) return mins ? `${hours} h ${mins} min` : `${hours} h`;
    const days = Math.floor(hours / 24);
    return hours % 24 ? `${days} d ${hours % 24} h` : `${days} d`;
  }

  function clip(text) {
    return text.length > valueCharsMax ? `${text.slice(0, valueCharsMax)}…` : text;
  }

  function plain(value) {
    if (value === null || value === undefined) return "null";
    if (typeof value === "string") return value;
    return JSON.stringify(value);
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "-" : String(text);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function badge(parent, text, className) {
    const span = document.createElement("span");
    span.className = `badge ${className}`;
    span.textContent = text;
    parent.appendChild(span);
    return span;
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  // -- namespaces ----------------------------------------------------------------------------

  const verdictLabel = {
    healthy: "healthy",
    syncing: "syncing",
    alert: "alert",
    alarm: "DIVERGED",
  };

  function namespaceState(ns) {
    if (ns.diverged > 0) return ["DIVERGED", "alarm"];
    if (ns.verdict === "alarm") return ["alarm", "alarm"];
    const label = verdictLabel[ns.verdict] || ns.verdict;
    const lag = ns.lagging > 0 ? `, ${ns.lagging} lagging` : "";
    return [`${label}${lag}`, ns.verdict];
  }

  function renderNamespaces(list, selected) {
    const rows = list.namespaces.map((ns) => {
      const tr = document.createElement("tr");
      tr.dataset.namespace = ns.namespace;
      if (ns.namespace === selected) tr.className = "selected";
      const nameCell = document.createElement("td");
      const link = document.createElement("a");
      link.href = `#/ns/${encodeURIComponent(ns.namespace)}`;
      link.textContent = ns.namespace;
      nameCell.appendChild(link);
      tr.appendChild(nameCell);
      cell(tr, ns.head_seq, "num");
      cell(tr, `${ns.connected}/${ns.replicas} connected`);
      const [label, cls] = namespaceState(ns);
      badge(cell(tr, ""), label, cls);
      return tr;
    });
    replaceRows($("namespaces").tBodies[0], rows);
    $("namespaces-empty").hidden = list.namespaces.length > 0;
    $("namespaces-truncated").hidden = !list.truncated;
  }

  // -- replicas ------------------------------------------------------------------------------

  const statusLabel = {
    converged: "converged",
    lagging: "lagging",
    pending: "pending writes",
    diverged: "DIVERGED",
    unknown: "no heartbeat",
  };

  function renderReplicas(view) {
    const rows = view.replicas.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.replica = r.replica_id;
      tr.className = `status-${r.status}`;
      cell(tr, r.replica_id, "mono");
      badge(cell(tr, ""), r.connected ? "connected" : "disconnected", r.connected ? "ok" : "off");
      badge(cell(tr, ""), statusLabel[r.status] || r.status, r.status);
      cell(tr, r.applied_seq, "num");
      cell(tr, r.lag_seqs, "num");
      cell(tr, formatSeconds(r.lag_seconds), "num");
      cell(tr, r.outbox, "num");
      cell(tr, formatSeconds(r.recovery_seconds), "num");
      cell(tr, r.digest ? r.digest.slice(0, 12) : "-", "mono");
      cell(tr, `${formatSeconds(r.last_seen_age_s)} ago`, "num");
      const alerts = cell(tr, "");
      if (r.alerts.length === 0) alerts.textContent = "-";
      for (const alert of r.alerts) {
        const div = document.createElement("div");
        div.className = `alert-${alert.severity}`;
        div.textContent = `${alert.code}: ${alert.message}`;
        alerts.appendChild(div);
      }
      return tr;
    });
    replaceRows($("replicas").tBodies[0], rows);
    $("replicas-empty").hidden = view.replicas.length > 0;

    const diverged = view.replicas.filter((r) => r.status === "diverged").map((r) => r.replica_id);
    const alarm = $("alarm");
    alarm.hidden = diverged.length === 0;
    alarm.textContent = diverged.length
      ? `Divergence alarm: ${diverged.join(", ")} hold the same updates as another replica ` +
        "but a different state. This is a bug: report it with the replicas' exports."
      : "";

    const s = view.summary;
    const parts = [
      `head seq ${view.head_seq}`,
      `${s.replicas} replica(s), ${s.connected} connected`,
      `${s.converged} converged`,
    ];
    if (s.lagging) parts.push(`${s.lagging} lagging`);
    if (s.pending) parts.push(`${s.pending} with pending writes`);
    if (s.diverged) parts.push(`${s.diverged} DIVERGED`);
    parts.push(s.alerts ? `${s.alerts} alert(s)` : "no alert");
    if (!view.loaded) parts.push("not loaded on the relay (from stored heartbeats)");
    $("detail-summary").textContent = parts.join(" · ");
  }

  // -- fields --------------------------------------------------------------------------------

  function renderValue(td, field) {
    const value = field.value;
    switch (field.kind) {
      case "orset": {
        const items = Array.isArray(value) ? value : [];
        td.textContent = items.length ? clip(items.map(plain).join(", ")) : "(empty set)";
        break;
      }
      case "lwwmap": {
        const entries = value && typeof value === "object" ? Object.entries(value) : [];
        td.textContent = entries.length
          ? clip(entries.map(([k, v]) => `${k} = ${plain(v)}`).join("; "))
          : "(empty map)";
        break;
      }
      case "log": {
        const items = Array.isArray(value) ? value : [];
        const last = items.slice(-logEntriesShown).map(plain);
        const head = `${items.length} entr${items.length === 1 ? "y" : "ies"}`;
        td.textContent = items.length ? clip(`${head}; last: ${last.join(" | ")}`) : "(empty log)";
        break;
      }
      default:
        td.textContent = clip(plain(value));
    }
    td.className = `value kind-${field.kind || "unknown"}`;
  }

  function renderState(state) {
    const rows = state.fields.map((field) => {
      const tr = document.createElement("tr");
      tr.dataset.field = field.name;
      cell(tr, field.name, "mono");
      cell(tr, field.kind);
      cell(tr, field.type);
      renderValue(cell(tr, ""), field);
      return tr;
    });
    replaceRows($("fields").tBodies[0], rows);
    $("fields-empty").hidden = state.fields.length > 0;
    const schema = state.schema && state.schema.name
      ? `schema ${state.schema.name} v${state.schema.version}`
      : "no schema metadata";
    $("schema-line").textContent =
      `${schema} · relay state at seq ${state.head_seq}, digest ${state.digest.slice(0, 12)}`;
    const violations = state.violations.map((v) => {
      const li = document.createElement("li");
      li.textContent = `schema violation in ${v.field}: ${v.detail}`;
      return li;
    });
    $("violations").replaceChildren(...violations);
  }

  // -- polling -------------------------------------------------------------------------------

  function setStatus(text, ok) {
    const status = $("status");
    status.textContent = text;
    status.className = ok ? "status ok" : "status error";
  }

  async function refreshDetail(selected) {
    const base = `v1/namespaces/${encodeURIComponent(selected)}`;
    const [replicas, state] = await Promise.allSettled([
      getJSON(`${base}/replicas`),
      getJSON(`${base}/state`),
    ]);
    $("detail").hidden = false;
    $("detail-title").textContent = `Namespace ${selected}`;
    const problems = [];
    if (replicas.status === "fulfilled") renderReplicas(replicas.value);
    else problems.push(`replicas: ${replicas.reason.message}`);
    if (state.status === "fulfilled") renderState(state.value);
    else problems.push(`fields: ${state.reason.message}`);
    return problems;
  }

  let timer = null;
  let running = false;

  function schedule(delayMs) {
    window.clearTimeout(timer);
    timer = window.setTimeout(refresh, delayMs);
  }

  async function refresh() {
    if (running) return;
    running = true;
    try {
      const list = await getJSON("v1/namespaces");
      let selected = selectedFromHash();
      if (!selected && list.namespaces.length) selected = list.namespaces[0].namespace;
      renderNamespaces(list, selected);
      const problems = selected ? await refreshDetail(selected) : [];
      if (!selected) $("detail").hidden = true;
      const time = new Date().toLocaleTimeString();
      if (problems.length) setStatus(`updated ${time}; ${problems.join("; ")}`, false);
      else setStatus(`live · updated ${time}`, true);
    } catch (err) {
      setStatus(`relay unreachable or refusing: ${err.message}`, false);
    } finally {
      running = false;
      schedule(intervalMs);
    }
  }

  window.addEventListener("hashchange", () => {
    $("detail").hidden = true;
    schedule(0);
  });
  refresh();
})();
