// The operator's console: sign in with an admin token (kept server-side as an HttpOnly session
// cookie; the page holds only the session's CSRF token), then overview, subscriptions, events,
// dead letters and tenants. Routing by the URL's fragment, so changing a filter or a page never
// reloads the document.
import {
  api, resume, adopt, signOut, el, mount, toast, attempt, fmtTime, fmtCount, fmtRate, pill, outcomePill,
  barChart, table, field, values, words, secretBox, button,
} from "/ui/common.js";

const main = document.getElementById("main");
const DELIVERY_SERIES = [
  { key: "delivered", label: "Delivered", cls: "s-ok" },
  { key: "failed", label: "Failed, retrying", cls: "s-warn" },
  { key: "dead_lettered", label: "Dead-lettered", cls: "s-bad" },
];

function route() {
  const [page, ...rest] = location.hash.replace(/^#\/?/, "").split("?")[0].split("/");
  return { page: page || "overview", arg: rest.map(decodeURIComponent).join("/") || null };
}

function params() {
  const q = location.hash.split("?")[1] || "";
  return new URLSearchParams(q);
}

// Renders the page again after `ms` (to show what an action led to), if it is still the page
// shown: not over a page the user went on to meanwhile.
function refreshLater(ms) {
  const hash = location.hash;
  setTimeout(() => {
    if (location.hash === hash) render();
  }, ms);
}

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

async function start() {
  const session = await resume("console");
  if (!session) return signInPage();
  showChrome(true);
  window.addEventListener("hashchange", render);
  render();
}

function showChrome(on) {
  document.getElementById("nav").hidden = !on;
  const out = document.getElementById("sign-out");
  out.hidden = !on;
  out.onclick = async () => {
    await attempt(signOut);
    location.hash = "";
    location.reload();
  };
}

function signInPage() {
  showChrome(false);
  const input = el("input", { type: "password", name: "token", autocomplete: "current-password", required: true, autofocus: true });
  const error = el("p", { class: "error", role: "alert" });
  const form = el(
    "form",
    { class: "card narrow", id: "sign-in" },
    el("h1", {}, "Sign in to the console"),
    el("p", {}, "Use a token with the ", el("code", {}, "admin"), " scope (from HERALD_TOKENS). It is exchanged for a session; the page never keeps it."),
    field("Admin token", input),
    error,
    el("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const s = await api("/console/session", { method: "POST", body: { token: input.value } });
      adopt(s);
      showChrome(true);
      window.addEventListener("hashchange", render);
      go("#/overview");
    } catch (err) {
      error.textContent = err.message;
    }
  });
  mount(main, form);
}

async function render() {
  const { page, arg } = route();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  try {
    if (page === "overview") await overview();
    else if (page === "subscriptions" && arg === "new") await subscriptionForm(null);
    else if (page === "subscriptions" && arg) await subscription(arg);
    else if (page === "subscriptions") await subscriptions();
    else if (page === "events" && arg) await eventPage(arg);
    else if (page === "events") await events();
    else if (page === "dead-letters") await deadLetters();
    else if (page === "tenants") await tenants();
    else if (page === "sessions") await sessions();
    else if (page === "sources" && arg === "new") await sourceForm();
    else if (page === "sources") await sources();
    else mount(main, el("p", { class: "empty" }, "No such page."));
  } catch (e) {
    if (e.status === 401) return signInPage();
    mount(main, el("p", { class: "error", role: "alert" }, e.message));
  }
}

function stat(label, value, kind, testid) {
  return el("div", { class: `stat ${kind || ""}`, "data-testid": testid }, el("span", { class: "label" }, label), el("strong", {}, value));
}

async function overview() {
  const o = await api("/v1/overview");
  const t = o.last_hour_totals;
  mount(
    main,
    el("h1", {}, "Overview", o.warming ? el("small", { class: "muted" }, " (still reading back the last day)") : null),
    el(
      "section",
      { class: "stats" },
      stat("Events in, last hour", fmtCount(t.events_in), "", "events-in"),
      stat("Delivered, last hour", fmtCount(t.delivered), "ok", "delivered"),
      stat("Failed attempts", fmtCount(t.failed), t.failed ? "warn" : "", "failed"),
      stat("Dead-lettered", fmtCount(t.dead_lettered), t.dead_lettered ? "bad" : "", "dead-lettered"),
      stat("Success rate", fmtRate(o.success_rate), "", "success-rate"),
      stat("Waiting to fan out", o.lag ? fmtCount(o.lag.events_pending) : "–", "", "lag-events"),
      stat("Deliveries waiting", o.lag ? fmtCount(o.lag.deliveries_pending + o.lag.deliveries_in_flight) : "–", "", "lag-deliveries"),
      stat("Dead letters kept", fmtCount(o.dead_letters), o.dead_letters ? "bad" : "", "dead-letters"),
      stat("Open circuits", fmtCount(o.open_circuits.length), o.open_circuits.length ? "bad" : "", "open-circuits"),
    ),
    el("section", { class: "card" }, el("h2", {}, "Deliveries, last hour"), barChart(o.last_hour, DELIVERY_SERIES, { label: "Deliveries per minute" })),
    el(
      "section",
      { class: "card" },
      el("h2", {}, "Open circuits"),
      table(o.open_circuits, [
        ["Subscription", (c) => el("a", { href: `#/subscriptions/${encodeURIComponent(c.subscription_id)}` }, c.subscription_id)],
        ["Tenant", (c) => c.tenant],
        ["URL", (c) => c.url],
        ["Since", (c) => fmtTime(c.since)],
        ["Replicas", (c) => c.replicas.join(", ")],
      ], { empty: "No circuit is open: every endpoint is being tried." }),
    ),
    el("section", { class: "card" }, el("h2", {}, "Tenants, last day"), tenantTable(o.tenants)),
  );
}

function tenantTable(rows) {
  return table(rows, [
    ["Tenant", (r) => el("a", { href: `#/subscriptions?tenant=${encodeURIComponent(r.tenant)}` }, r.tenant)],
    ["Subscriptions", (r) => `${fmtCount(r.subscriptions)}${r.disabled ? ` (${r.disabled} disabled)` : ""}`],
    ["Events in", (r) => fmtCount(r.totals.events_in)],
    ["Delivered", (r) => fmtCount(r.totals.delivered)],
    ["Failed", (r) => fmtCount(r.totals.failed)],
    ["Dead-lettered", (r) => fmtCount(r.totals.dead_lettered)],
    ["Success", (r) => fmtRate(r.success_rate)],
  ], { empty: "No tenant has subscriptions or events yet." });
}

async function tenants() {
  const o = await api("/v1/overview");
  mount(main, el("h1", {}, "Tenants"), el("section", { class: "card" }, tenantTable(o.tenants)));
}

async function subscriptions() {
  const p = params();
  const tenant = p.get("tenant") || "";
  const after = p.get("after") || "";
  const search = (p.get("q") || "").toLowerCase();
  const q = new URLSearchParams({ limit: "50" });
  if (tenant) q.set("tenant", tenant);
  if (after) q.set("after", after);
  const page = await api(`/v1/subscriptions?${q}`);
  const rows = page.data.filter((s) => !search || [s.id, s.url, s.description, s.tenant, ...s.event_types].join(" ").toLowerCase().includes(search));
  const filters = el(
    "form",
    { class: "filters" },
    field("Tenant", el("input", { name: "tenant", value: tenant, placeholder: "all" })),
    field("Search", el("input", { name: "q", value: p.get("q") || "", placeholder: "id, URL, type, description" })),
    el("button", { type: "submit" }, "Filter"),
    el("a", { class: "button", href: "#/subscriptions/new" }, "New subscription"),
  );
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    const v = values(filters);
    go(`#/subscriptions?${new URLSearchParams(Object.entries(v).filter(([, x]) => x))}`);
  });
  const next = page.next ? el("a", { class: "button ghost", href: `#/subscriptions?${new URLSearchParams({ ...(tenant && { tenant }), after: page.next })}` }, "Next page →") : null;
  mount(
    main,
    el("h1", {}, "Subscriptions"),
    filters,
    el("section", { class: "card" }, table(rows, [
      ["Id", (s) => el("a", { href: `#/subscriptions/${encodeURIComponent(s.id)}` }, s.id)],
      ["Tenant", (s) => s.tenant],
      ["URL", (s) => (s.destination ? `${s.destination.type}: ${s.url}` : s.url)],
      ["Event types", (s) => s.event_types.join(", ")],
      ["State", (s) => (s.enabled ? pill("enabled", "ok") : pill(s.disabled_reason ? "disabled by Herald" : "disabled", "bad"))],
    ], { empty: "No subscription matches.", onrow: (s) => go(`#/subscriptions/${s.id}`) }), next),
  );
}

const BROKER_FIELDS = {
  amqp: [["exchange", "Exchange", "\"\" (the default exchange)"], ["routing_key", "Routing key", "{event_type}"]],
  nats: [["subject", "Subject", "hooks.{tenant}.{event_type}"], ["credentials", "Credentials (a .creds file or an NKey seed; optional)", "sealed, never shown again"]],
  redis: [["stream", "Stream", "hooks:{tenant}"], ["max_len", "Max length (MAXLEN ~)", "unbounded"]],
};
const URL_HINTS = {
  webhook: "https://example.com/webhooks",
  amqp: "amqp://user:pass@rabbit:5672/vhost (amqps:// for TLS)",
  nats: "nats://user:pass@nats:4222 (tls:// for TLS)",
  redis: "redis://:pass@redis:6379/0 (rediss:// for TLS; redis+sentinel://sentinel:26379/master)",
  polling: "",
};

/** Where a subscription delivers: a webhook URL, or a broker and its fields (shown by type). */
function destinationFields(sub) {
  const dest = sub?.destination;
  const kind = dest ? dest.type : "webhook";
  const url = el("input", { name: "url", value: dest ? "" : sub?.url ?? "", required: !dest, placeholder: dest ? `${dest.url} (unchanged; enter the whole URL to replace it)` : URL_HINTS.webhook });
  const pick = el("select", { name: "destination_type" }, Object.keys(URL_HINTS).map((t) => el("option", { value: t, selected: t === kind }, t)));
  const extras = Object.entries(BROKER_FIELDS).flatMap(([type, fields]) =>
    fields.map(([name, label, placeholder]) => {
      // Credentials are never shown: the box starts empty, and left empty keeps them.
      const input = name === "credentials"
        ? el("textarea", { name: `${type}_${name}`, rows: 3, placeholder: dest?.credentials ? "set (unchanged unless the URL is replaced)" : placeholder })
        : el("input", { name: `${type}_${name}`, value: dest?.type === type ? dest[name] ?? "" : "", placeholder });
      const f = field(label, input);
      f.dataset.for = type;
      return f;
    }),
  );
  const urlField = field("URL", url, kind === "webhook" ? null : "Broker URLs carry their credentials: they are stored sealed and never shown again.");
  const show = () => {
    for (const f of extras) f.hidden = f.dataset.for !== pick.value;
    // A polling subscription has no URL: its consumer polls it.
    urlField.hidden = pick.value === "polling";
    if (pick.value === "polling") url.required = false;
    else if (!dest || pick.value !== dest.type) {
      url.placeholder = URL_HINTS[pick.value];
      url.required = true;
    }
  };
  pick.addEventListener("change", show);
  show();
  return [field("Delivers to", pick), urlField, ...extras];
}

/** `url` or `destination` for the API, from the form's values; editing a broker without a new
 * URL leaves its destination as it is. */
function destinationText(d) {
  if (d.type === "polling") return "polling: read with GET …/poll";
  const where = { amqp: `exchange "${d.exchange ?? ""}", routing key ${d.routing_key}`, nats: `subject ${d.subject}`, redis: `stream ${d.stream}${d.max_len ? ` (MAXLEN ~${d.max_len})` : ""}` };
  return `${d.type}: ${where[d.type] ?? ""}`;
}

function destinationBody(v, sub) {
  const type = v.destination_type;
  if (type === "webhook") return v.url || !sub ? { url: v.url } : {};
  if (type === "polling") return sub?.destination?.type === "polling" ? {} : { destination: { type } };
  if (!v.url && sub?.destination?.type === type) return {};
  const destination = { type, url: v.url };
  for (const [name] of BROKER_FIELDS[type] ?? []) {
    const value = v[`${type}_${name}`];
    if (value !== "" && value !== undefined) destination[name] = name === "max_len" ? Number(value) : value;
  }
  return { destination };
}

// How a webhook authenticates to its endpoint besides the signature: the fields of each type.
const AUTH_FIELDS = {
  oauth2_client_credentials: [["token_url", "Token URL", "https://auth.example.com/oauth/token"], ["client_id", "Client id", ""], ["client_secret", "Client secret", ""], ["scope", "Scope (optional)", ""], ["audience", "Audience (optional)", ""]],
  basic: [["username", "User name", ""], ["password", "Password", ""]],
  bearer: [["token", "Token", ""]],
};
const AUTH_SECRETS = ["client_secret", "password", "token"];

/** The endpoint's auth: a type, and its fields. Secrets are never shown: left empty, they stay. */
function authFields(sub) {
  const auth = sub?.auth;
  const pick = el("select", { name: "auth_type" }, ["none", ...Object.keys(AUTH_FIELDS)].map((t) => el("option", { value: t, selected: t === (auth?.type ?? "none") }, t)));
  const extras = Object.entries(AUTH_FIELDS).flatMap(([type, fields]) =>
    fields.map(([name, label, placeholder]) => {
      const secret = AUTH_SECRETS.includes(name);
      const kept = secret && auth?.type === type ? "set (unchanged unless given)" : placeholder;
      const input = el("input", { name: `auth_${type}_${name}`, type: secret ? "password" : "text", autocomplete: "off", value: !secret && auth?.type === type ? auth[name] ?? "" : "", placeholder: kept });
      const f = field(label, input);
      f.dataset.for = type;
      return f;
    }),
  );
  const show = () => {
    for (const f of extras) f.hidden = f.dataset.for !== pick.value;
  };
  pick.addEventListener("change", show);
  show();
  return [field("Endpoint authentication", pick, "Sent as the Authorization header besides the signature; secrets are sealed and never shown again."), ...extras];
}

/** `auth` for the API from the form: `null` for none; a secret left empty is kept. */
function authBody(v, sub) {
  const type = v.auth_type;
  if (type === "none") return sub?.auth ? { auth: null } : {};
  const auth = { type };
  for (const [name] of AUTH_FIELDS[type]) {
    const value = v[`auth_${type}_${name}`];
    if (value) auth[name] = value;
  }
  return { auth };
}

/** The transformation's source, with a sample payload and a button that runs it beside them. */
function transformationField(sub) {
  const code = el("textarea", { name: "transformation", rows: 6, placeholder: "function handler(webhook) {\n  webhook.payload = { text: webhook.eventType };\n  return webhook;\n}" }, sub?.transformation ?? "");
  const sample = el("textarea", { name: "transformation_sample", rows: 3 }, JSON.stringify({ id: "evt_sample", type: sub?.event_types?.[0] ?? "order.paid", data: {} }));
  const output = el("pre", { class: "mono", id: "transformation-output" });
  const run = button("Try it", async () => {
    let payload;
    try {
      payload = JSON.parse(sample.value || "{}");
    } catch {
      return toast("The sample payload is not valid JSON", "error");
    }
    const r = await attempt(() => api("/v1/transformations/test", { method: "POST", body: { code: code.value, payload, event_type: payload.type, url: sub?.url } }));
    if (r) output.textContent = JSON.stringify(r, null, 2);
  }, "ghost");
  run.type = "button";
  run.id = "transformation-try";
  return el(
    "div",
    { class: "transformation" },
    field("Transformation (JavaScript)", code, "handler(webhook) gets {method, url, payload, eventType, headers} and returns it changed (or sets cancel: true). Empty: none."),
    field("Sample payload (the webhook body)", sample),
    run,
    output,
  );
}

function subscriptionForm(sub) {
  const creating = !sub;
  const form = el(
    "form",
    { class: "card form", id: "subscription-form" },
    el("h2", {}, creating ? "New subscription" : "Edit"),
    creating ? field("Tenant", el("input", { name: "tenant", value: "default", required: true })) : null,
    ...destinationFields(sub),
    field("Event types", el("input", { name: "event_types", value: sub ? sub.event_types.join(", ") : "", required: true, placeholder: "order.paid, order.*" }), "Types or patterns, comma-separated."),
    field("Description", el("input", { name: "description", value: sub ? sub.description : "" })),
    el(
      "div",
      { class: "row" },
      field("Ordering", el("select", { name: "ordering" }, ["unordered", "fifo"].map((o) => el("option", { value: o, selected: (sub && sub.ordering === o) || (!sub?.ordering && o === "unordered") }, o)))),
      field("Rate limit (per second)", el("input", { name: "rate_limit", type: "number", min: 0, value: sub?.rate_limit ?? "" })),
      field("Max in flight", el("input", { name: "max_in_flight", type: "number", min: 0, value: sub?.max_in_flight ?? "" })),
    ),
    field("Retry schedule", el("input", { name: "retry_schedule", value: sub?.retry_schedule ?? "", placeholder: "the deployment's (e.g. 5s,1m,10m,1h)" })),
    field("Filter (JSON)", el("textarea", { name: "filter", rows: 3, placeholder: '{"data": {"amount": {"$gte": 100}}}' }, sub?.filter ? JSON.stringify(sub.filter) : "")),
    ...authFields(sub),
    transformationField(sub),
    creating ? field("Signature scheme", el("select", { name: "signature_scheme" }, el("option", { value: "hmac-sha256" }, "HMAC-SHA256 (v1)"), el("option", { value: "ed25519" }, "Ed25519 (v1a)"))) : null,
    el("button", { type: "submit" }, creating ? "Create" : "Save"),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const v = values(form);
    const body = {
      ...destinationBody(v, sub),
      ...(v.destination_type === "webhook" ? authBody(v, sub) : {}),
      event_types: words(v.event_types),
      description: v.description,
      ordering: v.ordering,
      retry_schedule: v.retry_schedule,
    };
    if (v.rate_limit) body.rate_limit = Number(v.rate_limit);
    if (v.max_in_flight) body.max_in_flight = Number(v.max_in_flight);
    try {
      body.filter = v.filter ? JSON.parse(v.filter) : null;
    } catch {
      return toast("The filter is not valid JSON", "error");
    }
    body.transformation = v.transformation || null;
    delete body.transformation_sample;
    if (creating) {
      body.tenant = v.tenant;
      body.signature_scheme = v.signature_scheme;
      if (!body.retry_schedule) delete body.retry_schedule;
      if (!body.filter) delete body.filter;
      if (!body.transformation) delete body.transformation;
      const created = await attempt(() => api("/v1/subscriptions", { method: "POST", body }));
      if (!created) return;
      await subscription(created.id, created);
      history.replaceState(null, "", `#/subscriptions/${created.id}`);
    } else {
      const saved = await attempt(() => api(`/v1/subscriptions/${encodeURIComponent(sub.id)}`, { method: "PATCH", body }));
      if (saved) {
        toast("Saved");
        render();
      }
    }
  });
  if (creating) mount(main, el("h1", {}, "New subscription"), form);
  return form;
}

async function subscription(id, created) {
  const [sub, stats, attempts] = await Promise.all([
    created || api(`/v1/subscriptions/${encodeURIComponent(id)}`),
    api(`/v1/stats?subscription=${encodeURIComponent(id)}&interval=minute`),
    api(`/v1/subscriptions/${encodeURIComponent(id)}/attempts?limit=50`),
  ]);
  const reveal = el("div", { id: "reveal" });
  if (created && created.secret) reveal.append(secretBox("Signing secret — shown once", created.secret, "Give it to the subscriber now: Herald will not show it again."));
  const actions = el(
    "div",
    { class: "actions" },
    button("Send test event", async () => {
      const r = await attempt(() => api(`/v1/subscriptions/${encodeURIComponent(id)}/test`, { method: "POST", body: {} }));
      if (r) toast(`Test event ${r.event_id} sent`);
      refreshLater(1500);
    }),
    button(sub.enabled ? "Disable" : "Enable", async () => {
      if (await attempt(() => api(`/v1/subscriptions/${encodeURIComponent(id)}`, { method: "PATCH", body: { enabled: !sub.enabled } }))) render();
    }, "ghost"),
    button("Rotate secret", async () => {
      const r = await attempt(() => api(`/v1/subscriptions/${encodeURIComponent(id)}/rotate-secret`, { method: "POST", body: {} }));
      if (r) mount(reveal, secretBox("New signing secret — shown once", r.secret || r.public_key, "The previous one keeps signing for the grace period (24 h)."));
    }, "ghost"),
    button("Delete", async () => {
      if (!confirm(`Delete ${id}? Deliveries waiting for it are dropped.`)) return;
      if (await attempt(() => api(`/v1/subscriptions/${encodeURIComponent(id)}`, { method: "DELETE" }))) {
        toast("Deleted");
        go("#/subscriptions");
      }
    }, "danger"),
  );
  const t = stats.totals;
  mount(
    main,
    el("p", {}, el("a", { href: "#/subscriptions" }, "← Subscriptions")),
    el("h1", {}, sub.url, " ", sub.enabled ? pill("enabled", "ok") : pill("disabled", "bad")),
    el("p", { class: "muted" }, `${sub.id} · tenant ${sub.tenant} · ${sub.signature_scheme}${sub.ordering ? ` · ${sub.ordering}` : ""}${sub.destination ? ` · ${destinationText(sub.destination)}` : ""}`),
    sub.disabled_reason ? el("p", { class: "error" }, `Disabled by Herald: ${sub.disabled_reason}`) : null,
    reveal,
    actions,
    el(
      "section",
      { class: "stats" },
      stat("Delivered, last hour", fmtCount(t.delivered), "ok", "sub-delivered"),
      stat("Failed attempts", fmtCount(t.failed), t.failed ? "warn" : "", "sub-failed"),
      stat("Dead-lettered", fmtCount(t.dead_lettered), t.dead_lettered ? "bad" : "", "sub-dead"),
      stat("Mean latency", t.attempts ? `${Math.round(t.latency_ms_total / t.attempts)} ms` : "–"),
    ),
    el("section", { class: "card" }, el("h2", {}, "Last hour"), barChart(stats.buckets, DELIVERY_SERIES, { height: 120 })),
    el("section", { class: "card" }, el("h2", {}, "Attempts"), attemptTable(attempts.data)),
    subscriptionForm(sub),
  );
}

function attemptTable(rows, { showSub = false } = {}) {
  return table(rows, [
    ["When", (a) => fmtTime(a.at)],
    ["Event", (a) => el("a", { href: `#/events/${encodeURIComponent(a.event_id)}?tenant=${encodeURIComponent(a.tenant)}` }, a.event_id)],
    showSub ? ["Subscription", (a) => el("a", { href: `#/subscriptions/${encodeURIComponent(a.subscription_id)}` }, a.subscription_id)] : null,
    ["#", (a) => a.attempt],
    ["Outcome", (a) => outcomePill(a.outcome)],
    ["Status", (a) => a.status ?? (a.error_class || "")],
    ["Latency", (a) => `${a.duration_ms} ms`],
    ["Error / response", (a) => el("span", { class: "excerpt" }, a.error || a.response_body || "")],
  ].filter(Boolean), { empty: "No attempt yet." });
}

async function events() {
  const p = params();
  const q = new URLSearchParams({ limit: "50" });
  for (const k of ["tenant", "type", "since", "after"]) if (p.get(k)) q.set(k, p.get(k));
  if (!p.get("since") && !p.get("after")) q.set("since", new Date(Date.now() - 3600e3).toISOString());
  const page = await api(`/v1/events?${q}`);
  const filters = el(
    "form",
    { class: "filters" },
    field("Event id", el("input", { name: "id", placeholder: "evt_…" })),
    field("Tenant", el("input", { name: "tenant", value: p.get("tenant") || "", placeholder: "all" })),
    field("Type", el("input", { name: "type", value: p.get("type") || "", placeholder: "order.*" })),
    field("Since", el("input", { name: "since", type: "datetime-local", value: p.get("since") ? p.get("since").slice(0, 16) : "" })),
    el("button", { type: "submit" }, "Find"),
  );
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    const v = values(filters);
    if (v.id) return go(`#/events/${encodeURIComponent(v.id)}${v.tenant ? `?tenant=${encodeURIComponent(v.tenant)}` : ""}`);
    const next = new URLSearchParams();
    if (v.tenant) next.set("tenant", v.tenant);
    if (v.type) next.set("type", v.type);
    if (v.since) next.set("since", new Date(v.since).toISOString());
    go(`#/events?${next}`);
  });
  const more = page.next ? el("a", { class: "button ghost", href: `#/events?${new URLSearchParams({ ...Object.fromEntries(q), after: page.next })}` }, "Next page →") : null;
  mount(
    main,
    el("h1", {}, "Events"),
    filters,
    el("section", { class: "card" }, table(page.data, [
      ["Stored", (e) => fmtTime(e.time)],
      ["Id", (e) => el("a", { href: `#/events/${encodeURIComponent(e.id)}?tenant=${encodeURIComponent(e.tenant)}` }, e.id)],
      ["Type", (e) => e.type],
      ["Tenant", (e) => e.tenant],
      ["Source", (e) => e.source],
    ], { empty: "No event in this range.", onrow: (e) => go(`#/events/${encodeURIComponent(e.id)}?tenant=${encodeURIComponent(e.tenant)}`) }), more),
  );
}

async function eventPage(id) {
  const tenant = params().get("tenant");
  const q = new URLSearchParams({ id, since: new Date(Date.now() - 7 * 86400e3).toISOString() });
  if (tenant) q.set("tenant", tenant);
  const found = await api(`/v1/events?${q}`);
  const event = found.data[0];
  // Its attempts are read from when it was stored on, in its tenant (else the whole retention
  // of every tenant is read).
  const aq = new URLSearchParams({ limit: "100" });
  if (event) {
    aq.set("since", event.stored_at);
    aq.set("tenant", event.tenant);
  }
  const attempts = await api(`/v1/events/${encodeURIComponent(id)}/attempts?${aq}`);
  const subs = event ? (await api(`/v1/subscriptions?tenant=${encodeURIComponent(event.tenant)}&limit=200`)).data : [];
  const pick = el("select", { name: "subscription" }, subs.map((s) => el("option", { value: s.id }, `${s.id} — ${s.url}`)));
  const resend = el("form", { class: "filters", id: "resend" }, field("Resend to", pick), el("button", { type: "submit" }, "Resend"));
  resend.addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await attempt(() => api(`/v1/subscriptions/${encodeURIComponent(pick.value)}/resend`, { method: "POST", body: { seq: event.seq } }));
    if (r) {
      toast(`Resent to ${r.subscription_id}`);
      refreshLater(1500);
    }
  });
  mount(
    main,
    el("p", {}, el("a", { href: "#/events" }, "← Events")),
    el("h1", {}, id),
    event
      ? el("section", { class: "card" },
          el("p", { class: "muted" }, `${event.type} · tenant ${event.tenant} · ${fmtTime(event.time)} · from ${event.source}`),
          el("pre", { class: "json" }, JSON.stringify(event.data, null, 2)),
          subs.length ? resend : el("p", { class: "muted" }, "The tenant has no subscription to resend to."))
      : el("p", { class: "muted" }, "The event itself is not among the last week's stored events; its attempts follow."),
    el("section", { class: "card" }, el("h2", {}, "Deliveries and attempts"), attemptTable(attempts.data, { showSub: true })),
  );
}

async function deadLetters() {
  const p = params();
  const q = new URLSearchParams({ limit: "100" });
  for (const k of ["tenant", "subscription", "after"]) if (p.get(k)) q.set(k, p.get(k));
  const page = await api(`/v1/dead-letters?${q}`);
  const filters = el(
    "form",
    { class: "filters" },
    field("Tenant", el("input", { name: "tenant", value: p.get("tenant") || "", placeholder: "all" })),
    field("Subscription", el("input", { name: "subscription", value: p.get("subscription") || "" })),
    el("button", { type: "submit" }, "Filter"),
  );
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    go(`#/dead-letters?${new URLSearchParams(Object.entries(values(filters)).filter(([, x]) => x))}`);
  });
  const boxes = new Map();
  const redrive = el("button", { type: "button", id: "redrive", onclick: async () => {
    const ids = [...boxes].filter(([, b]) => b.checked).map(([id]) => id);
    if (!ids.length) return toast("Select dead letters first", "error");
    const r = await attempt(() => api("/v1/dead-letters/redrive", { method: "POST", body: { ids } }));
    if (r) {
      toast(`${r.redriven} redriven, ${r.skipped} skipped`);
      render();
    }
  } }, "Redrive selected");
  const all = el("input", { type: "checkbox", "aria-label": "select all", onchange: (e) => boxes.forEach((b) => (b.checked = e.target.checked)) });
  const rows = page.data;
  mount(
    main,
    el("h1", {}, "Dead letters"),
    filters,
    el("section", { class: "card" },
      el("div", { class: "actions" }, el("label", { class: "inline" }, all, " all on this page"), redrive),
      table(rows, [
        ["", (d) => {
          const b = el("input", { type: "checkbox", "aria-label": `select ${d.id}`, "data-id": d.id });
          boxes.set(d.id, b);
          return b;
        }],
        ["Dead since", (d) => fmtTime(d.dead_at)],
        ["Subscription", (d) => el("a", { href: `#/subscriptions/${encodeURIComponent(d.subscription_id)}` }, d.subscription_id)],
        ["Tenant", (d) => d.tenant],
        ["Event", (d) => (d.event_id ? el("a", { href: `#/events/${encodeURIComponent(d.event_id)}?tenant=${encodeURIComponent(d.tenant)}` }, d.event_id) : "")],
        ["Type", (d) => d.event_type || ""],
        ["Attempts", (d) => d.attempts],
        ["Why", (d) => el("span", { class: "excerpt" }, d.last_error && !d.reason.includes(d.last_error) ? `${d.reason}: ${d.last_error}` : d.reason)],
      ], { empty: "No dead letter: everything was delivered or is still being tried." }),
      page.next ? el("a", { class: "button ghost", href: `#/dead-letters?${new URLSearchParams({ ...Object.fromEntries(q), after: page.next })}` }, "Next page →") : null),
  );
}

async function sessions() {
  const page = await api("/v1/sessions");
  const end = (s) => button("End", async () => {
    // 204: no body, so success is that it did not throw.
    const ended = await attempt(async () => {
      await api(`/v1/sessions/${encodeURIComponent(s.id)}`, { method: "DELETE" });
      return true;
    });
    if (ended) {
      toast("Session ended");
      render();
    }
  }, "ghost");
  mount(
    main,
    el("h1", {}, "Sessions"),
    el("p", { class: "muted" }, "Console and portal sessions live until they expire, are ended here, or the token that opened them leaves HERALD_TOKENS."),
    el("section", { class: "card" }, table(page.data, [
      ["Kind", (s) => s.kind],
      ["Tenant", (s) => s.tenant || ""],
      ["Opened", (s) => (s.created_at ? fmtTime(s.created_at) : "–")],
      ["Expires", (s) => fmtTime(s.expires_at)],
      ["Token (SHA-256)", (s) => el("code", {}, `${s.token_sha256_prefix}…`)],
      ["Token", (s) => (s.token_in_force ? pill("in force", "ok") : pill("revoked", "bad"))],
      ["", end],
    ], { empty: "No live session." })),
  );
}

// Inbound webhook sources: what each provider is given (the URL), and a form per provider.
const PROVIDERS = {
  stripe: ["tolerance_seconds"],
  github: [],
  shopify: [],
  "standard-webhooks": ["tolerance_seconds"],
  hmac: ["header", "algorithm", "encoding", "prefix", "id_header"],
  basic: ["username", "id_header"],
  "api-key": ["header", "id_header"],
};
const SOURCE_FIELDS = {
  tolerance_seconds: ["Timestamp tolerance (seconds)", "300"],
  header: ["Header", "x-signature (hmac) / x-api-key (api-key)"],
  algorithm: ["Algorithm", "sha256, sha512 or sha1"],
  encoding: ["Encoding", "hex or base64"],
  prefix: ["Prefix", "sha256="],
  username: ["User name", ""],
  id_header: ["Delivery id header", "the body's id"],
};

async function sources() {
  const page = await api("/v1/sources");
  const remove = (s) => button("Delete", async () => {
    if (!confirm(`Delete ${s.id}? Its URL answers 404 from then on.`)) return;
    const gone = await attempt(async () => {
      await api(`/v1/sources/${encodeURIComponent(s.id)}`, { method: "DELETE" });
      return true;
    });
    if (gone) {
      toast("Deleted");
      render();
    }
  }, "danger");
  mount(
    main,
    el("h1", {}, "Sources"),
    el("p", { class: "muted" }, "Inbound webhooks: give a provider its source's URL; each request it signs becomes an event of the source's tenant."),
    el("p", {}, el("a", { class: "button", href: "#/sources/new" }, "New source")),
    el("section", { class: "card" }, table(page.data, [
      ["Id", (s) => el("code", {}, s.id)],
      ["Provider", (s) => s.provider],
      ["Tenant", (s) => s.tenant],
      ["Event type", (s) => s.event_type || "(the provider's)"],
      ["URL", (s) => el("code", { class: "source-url" }, s.url)],
      ["Created", (s) => fmtTime(s.created_at)],
      ["", remove],
    ], { empty: "No source yet." })),
  );
}

async function sourceForm() {
  const pick = el("select", { name: "provider" }, Object.keys(PROVIDERS).map((p) => el("option", { value: p }, p)));
  const extras = Object.entries(SOURCE_FIELDS).map(([name, [label, placeholder]]) => {
    const f = field(label, el("input", { name, placeholder, type: name === "tolerance_seconds" ? "number" : "text" }));
    f.dataset.name = name;
    return f;
  });
  const show = () => {
    for (const f of extras) f.hidden = !PROVIDERS[pick.value].includes(f.dataset.name);
  };
  pick.addEventListener("change", show);
  show();
  const reveal = el("div", { id: "reveal" });
  const form = el(
    "form",
    { class: "card form", id: "source-form" },
    field("Provider", pick),
    field("Tenant", el("input", { name: "tenant", value: "default", required: true })),
    field("Secret", el("input", { name: "secret", type: "password", autocomplete: "off" }), "The provider's signing secret (or password, API key). Empty: Herald makes one and shows it once. Stored sealed, never shown again."),
    field("Event type", el("input", { name: "event_type", placeholder: "the provider's (e.g. stripe.{type})" })),
    field("Description", el("input", { name: "description" })),
    ...extras,
    el("button", { type: "submit" }, "Create"),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const v = values(form);
    const body = { provider: v.provider, tenant: v.tenant };
    for (const name of ["secret", "event_type", "description", ...PROVIDERS[v.provider]]) {
      if (v[name]) body[name] = name === "tolerance_seconds" ? Number(v[name]) : v[name];
    }
    const created = await attempt(() => api("/v1/sources", { method: "POST", body }));
    if (!created) return;
    form.remove();
    mount(reveal, el("p", {}, "Give the provider this URL:"), el("pre", { class: "mono", "data-testid": "source-url" }, created.url),
      created.secret ? secretBox("Secret — shown once", created.secret, "Configure the provider with it now: Herald will not show it again.") : null,
      el("p", {}, el("a", { href: "#/sources" }, "← Sources")));
  });
  mount(main, el("p", {}, el("a", { href: "#/sources" }, "← Sources")), el("h1", {}, "New source"), reveal, form);
}

start().catch((e) => mount(main, el("p", { class: "error" }, e.message)));
