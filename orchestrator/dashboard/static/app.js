// Sluice dashboard: one page, plain DOM, the JSON API with the login session's cookie,
// live updates from the event log's Server-Sent Events stream. No framework, no build.
"use strict";

const API = "/api/v1";
const RANK = { viewer: 0, operator: 1, admin: 2 };
const S = { me: null, csrf: null, page: "overview", arg: null, lastEvent: 0,
  rules: { state: "live", q: "", sort: "id", order: "desc", offset: 0, limit: 50 },
  recent: [], stream: null, refreshTimer: null };

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const badge = (s) => h("span", { class: `state s-${s}`, "data-state": s }, s);
const when = (iso) => (iso ? new Date(iso).toLocaleString(undefined, { hour12: false }) : "");
const can = (role) => S.me && RANK[S.me.role] >= RANK[role];
function table(cols, rows, attrs) {
  return h("table", attrs || {}, h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows));
}
const link = (href, text) => h("a", { href, onclick: (e) => { e.preventDefault(); go(href); } }, text);

async function call(method, path, body) {
  const headers = {};
  if (method !== "GET") { headers["X-CSRF-Token"] = S.csrf || ""; }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(API + path, { method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (!r.ok || !data || data.ok === false) {
    const err = new Error(data && data.error ? data.error.message : `HTTP ${r.status}`);
    err.status = r.status; err.code = data && data.error ? data.error.code : null;
    throw err;
  }
  return data;
}

// ------------------------------------------------------------------ session

async function start() {
  document.getElementById("login").addEventListener("submit", doLogin);
  document.getElementById("logout").addEventListener("click", doLogout);
  window.addEventListener("popstate", () => route(location.pathname, false));
  try {
    const me = await call("GET", "/auth/me");
    signedIn(me);
  } catch (e) {
    showLogin();
  }
}

function showLogin() {
  S.me = null;
  document.getElementById("login").hidden = false;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("view").replaceChildren();
  if (S.stream) { S.stream.close(); S.stream = null; }
}

async function doLogin(ev) {
  ev.preventDefault();
  const f = ev.target;
  try {
    const me = await call("POST", "/auth/login", { username: f.username.value, password: f.password.value });
    f.password.value = "";
    document.getElementById("login-error").textContent = "";
    signedIn(me);
  } catch (e) {
    document.getElementById("login-error").textContent = e.message;
  }
}

async function doLogout() {
  try { await call("POST", "/auth/logout"); } finally { showLogin(); }
}

function signedIn(me) {
  S.me = me; S.csrf = me.csrf;
  // Follow the stream from now: the pages' own queries show what came before.
  if (!S.lastEvent) S.lastEvent = me.last_event_id || 0;
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = me.kind !== "session";
  document.getElementById("who").textContent = `${me.username} (${me.role})`;
  for (const a of document.querySelectorAll("#nav a")) {
    a.hidden = a.dataset.role ? !can(a.dataset.role) : false;
    a.onclick = (e) => { e.preventDefault(); go(a.getAttribute("href")); };
  }
  follow();
  route(location.pathname, false);
}

// ------------------------------------------------------------------ live updates

function follow() {
  if (S.stream) S.stream.close();
  const es = new EventSource(`${API}/events/stream?after=${S.lastEvent}`);
  const live = document.getElementById("live");
  es.onopen = () => { live.className = "live on"; };
  es.onerror = () => { live.className = "live off"; };
  es.onmessage = null;
  const onEvent = (m) => {
    const item = JSON.parse(m.data);
    S.lastEvent = Math.max(S.lastEvent, item.id);
    S.recent.unshift(item); S.recent.length = Math.min(S.recent.length, 30);
    scheduleRefresh(item);
  };
  for (const kind of ["rule.created", "rule.pending", "rule.active", "rule.failed", "rule.suspended", "rule.withdrawing",
    "rule.withdrawn", "rule.expired", "incident.opened", "incident.escalated", "incident.resolved",
    "incident.expired", "adapter.session_up", "adapter.session_down", "policy.reloaded"]) {
    es.addEventListener(kind, onEvent);
  }
  S.stream = es;
}

function scheduleRefresh(item) {
  const relevant = {
    overview: () => true,
    rules: () => item.kind.startsWith("rule."),
    incidents: () => item.kind.startsWith("incident."),
    incident: () => item.incident_id === S.arg || item.kind.startsWith("rule."),
    adapters: () => item.kind.startsWith("adapter."),
    policy: () => item.kind === "policy.reloaded",
    runbook: () => false,
  }[S.page];
  if (!relevant || !relevant()) return;
  if (S.refreshTimer) return;
  // Coalesce a burst (a storm writes thousands of events) into one redraw.
  S.refreshTimer = setTimeout(redrawWhenIdle, 200);
}

// A redraw would throw away what the operator is typing (a withdraw reason, a filter, a
// policy being edited): it waits until that is done.
function redrawWhenIdle() {
  const view = document.getElementById("view");
  const active = document.activeElement;
  const typing = active && view.contains(active) && ["INPUT", "TEXTAREA", "SELECT"].includes(active.tagName);
  if (typing || view.querySelector(".withdraw-reason")) {
    S.refreshTimer = setTimeout(redrawWhenIdle, 300);
    return;
  }
  S.refreshTimer = null;
  render();
}

// ------------------------------------------------------------------ routing

function go(path) { route(path, true); }

function route(path, push) {
  const parts = path.replace(/^\/ui\/?/, "").split("/").filter(Boolean);
  S.page = parts[0] || "overview"; S.arg = parts[1] || null;
  if (push) history.pushState(null, "", path);
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("current", a.dataset.page === S.page || a.dataset.page === `${S.page}s`);
  }
  render();
}

async function render() {
  if (!S.me) return;
  const view = document.getElementById("view");
  const page = PAGES[S.page] || PAGES.overview;
  try {
    const content = await page();
    view.replaceChildren(...[content].flat(Infinity).filter((x) => x !== null && x !== undefined));
    view.dataset.page = S.page;
  } catch (e) {
    if (e.status === 401) { showLogin(); return; }
    view.replaceChildren(h("p", { class: "error" }, e.message));
  }
}

// ------------------------------------------------------------------ pages

const PAGES = {
  async overview() {
    const d = await call("GET", "/dashboard/overview");
    if (!S.lastEvent) S.lastEvent = d.last_event_id;
    const states = ["active", "suspended", "pending", "withdrawing", "failed"];
    const rulesRows = Object.entries(d.rules_by_adapter).map(([name, c]) =>
      h("tr", {}, h("td", {}, name), states.map((s) => h("td", { "data-count": `${name}:${s}` }, c[s] || 0))));
    const sessRows = d.adapters.map((a) => h("tr", {}, h("td", {}, a.name), h("td", {}, a.adapter_type),
      h("td", {}, badge(a.status)),
      h("td", {}, Object.keys(a.sessions).length ? Object.entries(a.sessions).map(([p, s]) =>
        h("div", {}, `${p} `, badge(s))) : h("span", { class: "muted" }, "none seen"))));
    const incRows = d.open_incidents.map((i) => h("tr", {}, h("td", {}, link(`/ui/incident/${i.id}`, i.target_ip)),
      h("td", {}, badge(i.status)), h("td", {}, i.attack_family), h("td", {}, i.severity), h("td", {}, when(i.opened_at))));
    const events = S.recent.length ? S.recent : d.recent_events.slice().reverse();
    return h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", {}, "Rules by adapter"),
        table(["Adapter", ...states], rulesRows, { id: "rules-by-adapter" })),
      h("section", { class: "card" }, h("h2", {}, "Speakers and BGP sessions"),
        table(["Adapter", "Type", "Status", "Sessions"], sessRows)),
      h("section", { class: "card" }, h("h2", {}, "Open incidents"),
        incRows.length ? table(["Target", "Status", "Family", "Severity", "Opened"], incRows) : h("p", { class: "muted" }, "none")),
      h("section", { class: "card" }, h("h2", {}, "Recent events"),
        h("ul", { class: "events", id: "recent-events" }, events.map(eventLine))));
  },

  async rules() {
    const f = S.rules;
    const qs = new URLSearchParams({ state: f.state, q: f.q, sort: f.sort, order: f.order,
      limit: f.limit, offset: f.offset });
    const d = await call("GET", `/dashboard/rules?${qs}`);
    const set = (k) => (e) => { f[k] = e.target.value; f.offset = 0; render(); };
    const toolbar = h("div", { class: "toolbar" },
      h("input", { id: "rule-filter", placeholder: "filter: target, reason, match", value: f.q,
        onchange: set("q") }),
      h("select", { id: "rule-state", onchange: set("state") },
        ["live", "active", "suspended", "pending", "withdrawing", "failed", "withdrawn", "expired", "all"].map((s) =>
          h("option", { value: s, selected: s === f.state }, s))),
      h("label", {}, "sort ", h("select", { id: "rule-sort", onchange: set("sort") },
        ["id", "target", "state", "adapter", "created_at", "expires_at"].map((s) =>
          h("option", { value: s, selected: s === f.sort }, s)))),
      h("select", { id: "rule-order", onchange: set("order") },
        ["desc", "asc"].map((s) => h("option", { value: s, selected: s === f.order }, s))),
      h("button", { disabled: f.offset === 0, onclick: () => { f.offset = Math.max(0, f.offset - f.limit); render(); } }, "‹ prev"),
      h("span", { id: "rule-range" }, `${d.total ? f.offset + 1 : 0}–${f.offset + d.rules.length} of ${d.total}`),
      h("button", { disabled: f.offset + f.limit >= d.total, onclick: () => { f.offset += f.limit; render(); } }, "next ›"));
    const rows = d.rules.map((r) => {
      const actions = h("td", {});
      if (can("operator") && ["active", "suspended", "pending", "failed"].includes(r.state)) {
        actions.append(h("button", { class: "danger withdraw", "data-rule": r.id,
          onclick: (e) => askReason(e.target, r) }, "Withdraw"));
      }
      return h("tr", { "data-rule-id": r.id },
        h("td", {}, r.id), h("td", {}, r.intent_type), h("td", { class: "target" }, r.target_ip),
        h("td", {}, r.adapter_name), h("td", {}, badge(r.state)),
        h("td", {}, r.incident_id ? link(`/ui/incident/${r.incident_id}`, r.origin) : r.origin),
        h("td", {}, r.reason), h("td", {}, when(r.created_at)), h("td", {}, when(r.expires_at)),
        actions);
    });
    return [h("h1", {}, "Rules"), toolbar,
      table(["#", "Kind", "Target", "Adapter", "State", "Origin", "Reason", "Created", "Expires", ""], rows,
        { id: "rules-table" })];
  },

  async incidents() {
    const d = await call("GET", "/incidents?limit=100");
    const rows = (d.incidents || []).map((i) => h("tr", {},
      h("td", {}, link(`/ui/incident/${i.id}`, i.target_ip)), h("td", {}, badge(i.status)),
      h("td", {}, i.attack_family), h("td", {}, i.severity), h("td", {}, i.tier || ""),
      h("td", {}, i.signals), h("td", {}, when(i.opened_at)), h("td", {}, when(i.resolved_at))));
    return [h("h1", {}, "Incidents"),
      table(["Target", "Status", "Family", "Severity", "Tier", "Signals", "Opened", "Resolved"], rows)];
  },

  async incident() {
    const id = S.arg;
    const [d, t] = await Promise.all([call("GET", `/incidents/${id}`),
      call("GET", `/dashboard/incidents/${id}/timeline`)]);
    const i = d.incident;
    const decisions = (i.decisions || []).map((x) => h("div", { class: "card" },
      h("div", {}, badge(x.status), ` ${when(x.at)} `, x.tier ? `tier ${x.tier}` : ""),
      h("pre", {}, JSON.stringify(x.explanation, null, 2)),
      x.refused && x.refused.length ? h("p", { class: "error" }, `refused: ${x.refused.map((r) => r.message).join("; ")}`) : null));
    const rules = t.rules.map((r) => h("tr", {}, h("td", {}, r.id), h("td", {}, r.intent),
      h("td", {}, r.adapter_name), h("td", {}, badge(r.state)),
      h("td", {}, r.to_wire_seconds === null ? "" : `${r.to_wire_seconds.toFixed(3)} s`)));
    const actions = h("div", { class: "toolbar" });
    if (can("operator") && ["open", "mitigating"].includes(i.status)) {
      actions.append(h("button", { class: "danger", onclick: async () => {
        await call("POST", `/incidents/${id}/resolve`); render(); } }, "Resolve"));
    }
    return [h("h1", {}, `Incident ${i.target_ip} `, badge(i.status)), actions,
      h("div", { class: "grid" },
        h("section", { class: "card" }, h("h2", {}, "Signals"),
          h("p", {}, `${i.signals} signal(s), ${i.attack_family}, severity ${i.severity}, peak ${i.peak_pps} pps / ${i.peak_bps} bps`),
          h("pre", {}, JSON.stringify(i.last_signal, null, 2))),
        h("section", { class: "card" }, h("h2", {}, "Rules it made (time to the wire)"),
          table(["#", "Intent", "Adapter", "State", "To wire"], rules))),
      h("h2", {}, "Decisions"), decisions.length ? decisions : h("p", { class: "muted" }, "none"),
      h("h2", {}, "Timeline"), h("ul", { class: "events" }, t.events.map(eventLine))];
  },

  async adapters() {
    const d = await call("GET", "/mitigation/adapters");
    const rows = d.adapters.map((a) => {
      const out = h("td", { class: "test-result" });
      const btn = can("operator") ? h("button", { onclick: async () => {
        out.textContent = "testing…";
        try { const r = await call("POST", `/mitigation/adapters/${a.id}/test`); out.replaceChildren(h("pre", {}, JSON.stringify(r.test, null, 2))); }
        catch (e) { out.textContent = e.message; }
      } }, "Test") : null;
      const sessions = a.health && a.health.sessions ? Object.entries(a.health.sessions).map(([p, s]) => h("div", {}, `${p} `, badge(String(s).toLowerCase()))) : "";
      return h("tr", {}, h("td", {}, a.name), h("td", {}, a.adapter_type), h("td", {}, a.endpoint),
        h("td", {}, badge(a.status)), h("td", {}, sessions), h("td", {}, when(a.last_checked_at)),
        h("td", {}, a.managed_by), h("td", {}, btn), out);
    });
    return [h("h1", {}, "Adapters"),
      table(["Name", "Type", "Endpoint", "Health", "Sessions", "Checked", "Managed by", "", ""], rows)];
  },

  async policy() {
    const [esc, thr, allow, exp] = await Promise.all([call("GET", "/mitigation/escalation-policy"),
      call("GET", "/mitigation/thresholds"), call("GET", "/allowlist"), call("GET", "/policy/export")]);
    const strip = (d) => { const c = { ...d }; delete c.ok; return c; };
    return [h("h1", {}, "Policy"), h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", {}, "Tiers (escalation policy)"), h("pre", { id: "policy-tiers" }, JSON.stringify(strip(esc), null, 2))),
      h("section", { class: "card" }, h("h2", {}, "Thresholds"), h("pre", {}, JSON.stringify(strip(thr), null, 2))),
      h("section", { class: "card" }, h("h2", {}, "Allowlist"), h("pre", {}, JSON.stringify(strip(allow), null, 2)))),
      planForm(exp.yaml)];
  },

  async runbooks() {
    const d = await call("GET", "/runbooks");
    const rows = d.runbooks.map((rb) => {
      const actions = h("td", { class: "runbook-actions" });
      if (can("operator")) {
        actions.append(
          h("button", { class: "runbook-toggle", "data-runbook": rb.id, onclick: async () => {
            await call("POST", `/runbooks/${rb.id}/toggle`); render(); } }, rb.active ? "Disable" : "Enable"),
          h("button", { class: "runbook-test", "data-runbook": rb.id, onclick: async (e) => {
            e.target.disabled = true;
            try { await call("POST", `/runbooks/${rb.id}/test`, {}); go(`/ui/runbook/${rb.id}`); }
            catch (err) { actions.append(h("div", { class: "error" }, err.message)); e.target.disabled = false; }
          } }, "Test run (dry)"));
      }
      return h("tr", { "data-runbook-id": rb.id }, h("td", {}, link(`/ui/runbook/${rb.id}`, rb.name)),
        h("td", {}, badge(rb.active ? "enabled" : "disabled")),
        h("td", {}, h("code", {}, JSON.stringify(rb.trigger_conditions || {}))),
        h("td", {}, rb.steps.map((x) => x.action_type).join(" → ")),
        h("td", {}, rb.execution_count), h("td", {}, when(rb.last_execution_at)), actions);
    });
    return [h("h1", {}, "Runbooks"), rows.length
      ? table(["Name", "State", "Triggers", "Steps", "Runs", "Last run", ""], rows, { id: "runbooks-table" })
      : h("p", { class: "muted", id: "runbooks-table" }, "no runbooks yet (POST /api/v1/runbooks)")];
  },

  async runbook() {
    const id = S.arg;
    const [r, x] = await Promise.all([call("GET", `/runbooks/${id}`), call("GET", `/runbooks/${id}/executions?limit=50`)]);
    const rb = r.runbook;
    const execs = x.executions.map((e) => h("section", { class: "card execution", "data-execution": e.id },
      h("div", {}, badge(e.status), ` ${e.mode} `, h("span", { class: "muted" }, e.trigger), ` ${when(e.started_at)}`,
        e.duration_ms === null ? "" : ` (${e.duration_ms} ms)`,
        e.incident_id ? [" ", link(`/ui/incident/${e.incident_id}`, "incident")] : ""),
      e.error ? h("p", { class: "error" }, e.error) : null,
      table(["#", "Action", "Status", "Took", "Output / error"], e.steps.map((st) => h("tr", { class: "step-result" },
        h("td", {}, st.index), h("td", {}, st.action_type), h("td", {}, badge(st.status)),
        h("td", {}, st.duration_ms === null ? "" : `${st.duration_ms} ms`),
        h("td", {}, st.error ? h("span", { class: "error" }, st.error) : h("code", {}, st.output === null ? "" : JSON.stringify(st.output))))))));
    return [h("h1", {}, `Runbook ${rb.name} `, badge(rb.active ? "enabled" : "disabled")),
      rb.description ? h("p", {}, rb.description) : null,
      h("div", { class: "grid" },
        h("section", { class: "card" }, h("h2", {}, "Trigger"), h("pre", {}, JSON.stringify(rb.trigger_conditions, null, 2))),
        h("section", { class: "card" }, h("h2", {}, "Steps"), h("pre", { id: "runbook-steps" }, JSON.stringify(rb.steps, null, 2)))),
      h("h2", {}, `Executions (${x.total})`),
      execs.length ? h("div", { id: "executions" }, execs) : h("p", { class: "muted", id: "executions" }, "none yet")];
  },

  async audit() {
    const d = await call("GET", "/audit?limit=200");
    const out = h("span", { id: "audit-verify-result" });
    const verify = h("button", { id: "audit-verify", onclick: async () => {
      const v = await call("GET", "/audit/verify");
      out.replaceChildren(v.valid ? badge("ok") : badge("bad"),
        v.valid ? ` chain intact: ${v.entries} entries` : ` broken at entry ${v.first_bad_id}: ${v.problem}`);
    } }, "Verify the chain");
    const rows = d.entries.map((e) => h("tr", {}, h("td", {}, e.id), h("td", {}, when(e.at)),
      h("td", {}, e.actor), h("td", {}, e.action), h("td", {}, e.target), h("td", {}, h("code", {}, e.detail))));
    return [h("h1", {}, "Audit log"), h("div", { class: "toolbar" }, verify, out),
      table(["#", "At", "Actor", "Action", "Target", "Detail"], rows)];
  },

  async pcaps() {
    const d = await call("GET", "/pcaps?limit=100");
    return [h("h1", {}, "PCAPs"), autoTable(d.pcaps, (row, key, v) =>
      key === "id" ? link(`/ui/pcap/${v}`, String(v).slice(0, 8)) : null, { id: "pcaps-table" })];
  },

  async pcap() {
    const id = S.arg;
    const [p, a] = await Promise.all([call("GET", `/pcaps/${id}`), call("GET", `/pcaps/${id}/analysis`)]);
    return [h("h1", {}, `PCAP ${id.slice(0, 8)}`), h("div", { class: "grid" },
      h("section", { class: "card" }, h("h2", {}, "Capture"), h("pre", {}, JSON.stringify(p.pcap, null, 2))),
      h("section", { class: "card" }, h("h2", {}, "Analysis"), h("pre", { id: "pcap-analysis" }, JSON.stringify(a.analysis, null, 2))))];
  },

  async jobs() {
    const [jobs, profiles] = await Promise.all([call("GET", "/jobs"), call("GET", "/attack-profiles")]);
    return [h("h1", {}, "Agent jobs"), autoTable(jobs.jobs || [], null, { id: "jobs-table" }),
      h("h2", {}, "Attack profiles"), autoTable(profiles.profiles || [], null)];
  },

  async operators() {
    const d = await call("GET", "/workspace/operators");
    const form = h("form", { class: "toolbar", onsubmit: async (e) => {
      e.preventDefault();
      const f = e.target;
      try { await call("POST", "/workspace/operators", { username: f.u.value, password: f.p.value, role: f.r.value }); render(); }
      catch (err) { f.querySelector(".error").textContent = err.message; }
    } }, h("input", { name: "u", placeholder: "username", required: true }),
      h("input", { name: "p", type: "password", placeholder: "password (12+ characters)", required: true }),
      h("select", { name: "r" }, ["viewer", "operator", "admin"].map((r) => h("option", { value: r }, r))),
      h("button", { class: "primary" }, "Add operator"), h("span", { class: "error" }));
    const rows = d.operators.map((o) => h("tr", {}, h("td", {}, o.username), h("td", {}, o.role),
      h("td", {}, when(o.last_login_at)), h("td", {}, o.disabled ? "disabled" : "")));
    return [h("h1", {}, "Operators"), form, table(["Username", "Role", "Last login", ""], rows)];
  },
};

// The plan preview: edit the API-managed policy document, see what would be decided
// differently (nothing is saved; POST /policy/plan).
function planForm(yaml) {
  if (S.plan === undefined) S.plan = { doc: yaml, signals: "", out: null };
  const doc = h("textarea", { id: "plan-document", rows: 16, spellcheck: "false" });
  doc.value = S.plan.doc;
  const sig = h("textarea", { id: "plan-signals", rows: 4, spellcheck: "false",
    placeholder: "optional: recorded signals as a JSON list, e.g. [{\"target_ip\": \"192.0.2.1\", \"bps\": \"5G\"}]; empty: the last signal of each recent incident" });
  sig.value = S.plan.signals;
  const out = h("div", { id: "plan-result" });
  const show = (p) => {
    if (!p) return;
    if (p.error) { out.replaceChildren(h("p", { class: "error", id: "plan-error" }, p.error)); return; }
    out.replaceChildren(h("p", { id: "plan-summary" }, `${p.summary} (signals: ${p.source})`),
      p.ignored.length ? h("p", { class: "muted" }, `declared by the files, unchanged: ${p.ignored.join(", ")}`) : null,
      p.changes.map((c) => h("pre", { class: "plan-change" }, c.text)));
  };
  const run = async () => {
    S.plan.doc = doc.value; S.plan.signals = sig.value;
    const body = { document: doc.value };
    try {
      if (sig.value.trim()) body.signals = JSON.parse(sig.value);
      S.plan.out = await call("POST", "/policy/plan", body);
    } catch (e) { S.plan.out = { error: e.message }; }
    show(S.plan.out);
  };
  show(S.plan.out);
  return h("section", { class: "card plan" }, h("h2", {}, "Plan a change"),
    h("p", { class: "muted" }, "The policy objects managed through the API (as sluice policy export writes them). Edit, then preview what would be decided differently; nothing is saved."),
    doc, sig, h("div", { class: "toolbar" },
      h("button", { class: "primary", id: "plan-preview", onclick: run }, "Preview plan"),
      h("button", { onclick: () => { S.plan = undefined; render(); } }, "Reset")), out);
}

// A table of whatever the API lists: its scalar fields as columns (cell() may override one).
function autoTable(items, cell, attrs) {
  if (!items.length) return h("p", { class: "muted" }, "none");
  const cols = Object.keys(items[0]).filter((k) => items.some((i) => i[k] === null || typeof i[k] !== "object")).slice(0, 9);
  const rows = items.map((i) => h("tr", {}, cols.map((k) => {
    const custom = cell ? cell(i, k, i[k]) : null;
    const v = i[k];
    return h("td", {}, custom || (k === "status" || k === "state" ? badge(String(v)) : (v === null || v === undefined ? "" : String(v))));
  })));
  return table(cols, rows, attrs);
}

function eventLine(e) {
  const what = [e.rule_id ? `rule ${e.rule_id}` : "", e.incident_id ? `incident ${e.incident_id.slice(0, 8)}` : "",
    e.detail && e.detail.peer ? `peer ${e.detail.peer}` : ""].filter(Boolean).join(" ");
  return h("li", { "data-event-id": e.id }, `${when(e.at)} `, h("b", {}, e.kind), ` ${what}`);
}

function askReason(button, rule) {
  const cell = button.parentElement;
  const input = h("input", { class: "withdraw-reason", placeholder: "reason", required: true });
  const confirm = h("button", { class: "danger withdraw-confirm", onclick: async () => {
    try {
      await call("DELETE", `/mitigation/rules/${rule.id}`, { reason: input.value });
      render();
    } catch (e) { cell.append(h("div", { class: "error withdraw-error" }, e.message)); }
  } }, "Confirm withdraw");
  cell.replaceChildren(input, confirm);
  input.focus();
}

document.addEventListener("DOMContentLoaded", start);
