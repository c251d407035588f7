// The subscriber portal: opened by a one-time link (`/portal/#code=…`) that the operator's
// backend asked for, it shows one tenant's endpoints and deliveries. The code is posted once and
// removed from the address; the session is an HttpOnly cookie, the page keeps only its CSRF
// token. Themed by the link's colours and logo (CSS variables, set through the CSSOM, which the
// Content-Security-Policy allows where inline styles are not).
import {
  api, resume, adopt, el, mount, toast, attempt, fmtTime, fmtCount, pill, outcomePill, barChart, table, field,
  values, words, secretBox, verifyHelp, button,
} from "/ui/common.js";

const main = document.getElementById("main");
let session = null;
let catalog = [];

function route() {
  const [page, ...rest] = location.hash.replace(/^#\/?/, "").split("?")[0].split("/");
  return { page: page || "endpoints", arg: rest.map(decodeURIComponent).join("/") || null };
}

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function theme(t) {
  if (!t) return;
  const root = document.documentElement.style;
  if (t.primary_color) root.setProperty("--primary", t.primary_color);
  if (t.background_color) root.setProperty("--bg", t.background_color);
  if (t.text_color) root.setProperty("--text", t.text_color);
  if (t.name) {
    document.getElementById("product").textContent = t.name;
    document.title = `${t.name} — webhooks`;
  }
  if (t.logo_url) {
    const logo = document.getElementById("logo");
    logo.src = t.logo_url;
    logo.hidden = false;
  }
}

async function start() {
  const code = new URLSearchParams(location.hash.replace(/^#/, "")).get("code");
  if (code) {
    // The code leaves the address bar and history before anything else happens.
    history.replaceState(null, "", location.pathname + "#/endpoints");
    try {
      session = await api("/portal/session", { method: "POST", body: { code } });
      adopt(session);
    } catch (e) {
      return refused(e.message);
    }
  } else {
    session = await resume("portal");
    if (!session) return refused("This page opens from a link your provider gives you. Ask them for a new one.");
  }
  theme(session.theme);
  document.getElementById("nav").hidden = false;
  document.body.dataset.tenant = session.tenant;
  catalog = (await attempt(() => api("/v1/event-types?limit=500")))?.data || [];
  window.addEventListener("hashchange", render);
  render();
}

function refused(why) {
  mount(main, el("section", { class: "card narrow", id: "refused" }, el("h1", {}, "No access"), el("p", { class: "error", role: "alert" }, why)));
}

async function render() {
  const { page, arg } = route();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  try {
    if (page === "endpoints" && arg === "new") endpointForm(null);
    else if (page === "endpoints" && arg) await endpoint(arg);
    else if (page === "endpoints") await endpoints();
    else if (page === "deliveries") await deliveries();
    else if (page === "verify") await verify();
    else mount(main, el("p", { class: "empty" }, "No such page."));
  } catch (e) {
    if (e.status === 401) return refused("Your session has ended. Open the portal again from your provider's page.");
    mount(main, el("p", { class: "error", role: "alert" }, e.message));
  }
}

async function endpoints() {
  const page = await api("/v1/subscriptions?limit=200");
  mount(
    main,
    el("div", { class: "title-row" }, el("h1", {}, "Endpoints"), el("a", { class: "button", href: "#/endpoints/new" }, "Add endpoint")),
    el("section", { class: "card" }, table(page.data, [
      ["URL", (s) => el("a", { href: `#/endpoints/${s.id}` }, s.url)],
      ["Description", (s) => s.description],
      ["Events", (s) => s.event_types.join(", ")],
      ["State", (s) => (s.enabled ? pill("active", "ok") : pill(s.disabled_reason ? "disabled" : "paused", "bad"))],
    ], { empty: "No endpoint yet: add one to start receiving webhooks.", onrow: (s) => go(`#/endpoints/${s.id}`) })),
  );
}

function typePicker(selected) {
  const chosen = new Set(selected || []);
  const known = catalog.map((t) => t.name);
  const boxes = known.map((name) =>
    el("label", { class: "inline" }, el("input", { type: "checkbox", name: "type", "data-group": "types", value: name, checked: chosen.has(name) }), " ", name),
  );
  const others = [...chosen].filter((t) => !known.includes(t));
  return el(
    "div",
    { class: "types" },
    boxes.length ? el("div", { class: "checks" }, boxes) : null,
    field(boxes.length ? "Other types or patterns" : "Event types", el("input", { name: "other_types", value: others.join(", "), placeholder: "order.* (comma-separated)" })),
  );
}

/** What the operator's link lets this portal offer beyond webhooks. */
function grants() {
  return session?.grants || {};
}

const BROKER_HINTS = {
  amqp: ["amqp://user:pass@host:5672/vhost (amqps:// for TLS)", [["exchange", "Exchange"], ["routing_key", "Routing key"]]],
  nats: ["nats://user:pass@host:4222 (tls:// for TLS)", [["subject", "Subject"], ["credentials", "Credentials (a .creds file or an NKey seed; optional)"]]],
  redis: ["redis://:pass@host:6379/0 (rediss:// for TLS; redis+sentinel://sentinel:26379/master)", [["stream", "Stream"]]],
  // Not pushed to: your system polls GET /v1/subscriptions/{id}/poll.
  polling: ["", []],
};

/** The URL, and where the operator allows it, a broker type and its fields. */
function destinationPicker(sub) {
  const allowed = grants().destinations || [];
  const dest = sub?.destination;
  const url = el("input", { name: "url", value: dest ? "" : sub?.url ?? "", required: !dest, placeholder: dest ? `${dest.url} (unchanged)` : "https://example.com/webhooks" });
  if (!allowed.length) return [field("URL", url)];
  const pick = el("select", { name: "destination_type" }, ["webhook", ...allowed].map((t) => el("option", { value: t, selected: t === (dest?.type ?? "webhook") }, t)));
  const extras = allowed.flatMap((type) => BROKER_HINTS[type][1].map(([name, label]) => {
    const input = name === "credentials"
      ? el("textarea", { name: `${type}_${name}`, rows: 3, placeholder: "sealed, never shown again" })
      : el("input", { name: `${type}_${name}`, value: dest?.type === type ? dest[name] ?? "" : "" });
    const f = field(label, input);
    f.dataset.for = type;
    return f;
  }));
  const urlField = field("URL", url);
  const show = () => {
    for (const f of extras) f.hidden = f.dataset.for !== pick.value;
    urlField.hidden = pick.value === "polling";
    url.required = pick.value !== "polling" && !(dest && dest.type === pick.value);
    if (pick.value !== "webhook" && !dest) url.placeholder = BROKER_HINTS[pick.value][0];
  };
  pick.addEventListener("change", show);
  show();
  return [field("Delivers to", pick), urlField, ...extras];
}

/** `url` or `destination` for the API; a broker left without a new URL is left as it is. */
function target(v, sub) {
  const type = v.destination_type || "webhook";
  if (type === "webhook") return v.url || !sub ? { url: v.url } : {};
  if (type === "polling") return sub?.destination?.type === "polling" ? {} : { destination: { type } };
  if (!v.url && sub?.destination?.type === type) return {};
  const destination = { type, url: v.url };
  for (const [name] of BROKER_HINTS[type][1]) if (v[`${type}_${name}`]) destination[name] = v[`${type}_${name}`];
  return { destination };
}

function endpointForm(sub) {
  const creating = !sub;
  const form = el(
    "form",
    { class: "card form", id: "endpoint-form" },
    el("h2", {}, creating ? "Add an endpoint" : "Edit endpoint"),
    ...destinationPicker(sub),
    field("Description", el("input", { name: "description", value: sub ? sub.description : "" })),
    el("fieldset", {}, el("legend", {}, "Events to receive"), typePicker(sub && sub.event_types)),
    grants().transformations
      ? field("Transformation (JavaScript, optional)", el("textarea", { name: "transformation", rows: 5, placeholder: "function handler(webhook) {\n  return webhook;\n}" }, sub?.transformation ?? ""), "handler(webhook) may change webhook.payload, method, url and headers, or set cancel: true.")
      : null,
    el("button", { type: "submit" }, creating ? "Add endpoint" : "Save"),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const v = values(form);
    const types = [...(v.types || []), ...words(v.other_types)];
    if (!types.length) return toast("Pick at least one event type", "error");
    const body = { ...target(v, sub), description: v.description, event_types: types };
    if (grants().transformations) body.transformation = v.transformation || null;
    if (creating) {
      const created = await attempt(() => api("/v1/subscriptions", { method: "POST", body }));
      if (!created) return;
      await endpoint(created.id, created);
      history.replaceState(null, "", `#/endpoints/${created.id}`);
    } else if (await attempt(() => api(`/v1/subscriptions/${encodeURIComponent(sub.id)}`, { method: "PATCH", body }))) {
      toast("Saved");
      render();
    }
  });
  if (creating) mount(main, el("p", {}, el("a", { href: "#/endpoints" }, "← Endpoints")), form);
  return form;
}

async function endpoint(id, created) {
  const [sub, stats, attempts] = await Promise.all([
    created || api(`/v1/subscriptions/${encodeURIComponent(id)}`),
    api(`/v1/stats?subscription=${encodeURIComponent(id)}&interval=hour`),
    api(`/v1/subscriptions/${encodeURIComponent(id)}/attempts?limit=50`),
  ]);
  const reveal = el("div", { id: "reveal" });
  const showSecret = (title, secret) => mount(reveal, secretBox(title, secret, "Store it with your endpoint's configuration now: it will not be shown again."));
  if (created && created.secret) showSecret("Signing secret", created.secret);
  const t = stats.totals;
  mount(
    main,
    el("p", {}, el("a", { href: "#/endpoints" }, "← Endpoints")),
    el("h1", {}, sub.url, " ", sub.enabled ? pill("active", "ok") : pill("paused", "bad")),
    sub.destination?.type === "polling"
      ? el("p", { class: "muted", "data-testid": "polling-help" }, "A polling endpoint: nothing is pushed to it. Your system reads its events with ", el("code", {}, `GET ${location.origin}${sub.url}?cursor=…`), " and an API token of yours, passing back each answer's cursor to acknowledge what it read.")
      : null,
    sub.disabled_reason ? el("p", { class: "error" }, `Disabled: ${sub.disabled_reason}`) : null,
    reveal,
    el(
      "div",
      { class: "actions" },
      button("Send test", async () => {
        const r = await attempt(() => api(`/v1/subscriptions/${encodeURIComponent(id)}/test`, { method: "POST", body: {} }));
        if (r) toast("Test webhook sent");
        setTimeout(render, 1500);
      }),
      button(sub.enabled ? "Pause" : "Resume", async () => {
        if (await attempt(() => api(`/v1/subscriptions/${encodeURIComponent(id)}`, { method: "PATCH", body: { enabled: !sub.enabled } }))) render();
      }, "ghost"),
      button("Rotate secret", async () => {
        const r = await attempt(() => api(`/v1/subscriptions/${encodeURIComponent(id)}/rotate-secret`, { method: "POST", body: {} }));
        if (r) showSecret("New signing secret (the old one keeps working for 24 hours)", r.secret || r.public_key);
      }, "ghost"),
      button("Delete", async () => {
        if (!confirm("Delete this endpoint? It will receive nothing more.")) return;
        if (await attempt(() => api(`/v1/subscriptions/${encodeURIComponent(id)}`, { method: "DELETE" }))) {
          toast("Deleted");
          go("#/endpoints");
        }
      }, "danger"),
    ),
    el("section", { class: "stats" },
      el("div", { class: "stat ok" }, el("span", { class: "label" }, "Delivered, last day"), el("strong", {}, fmtCount(t.delivered))),
      el("div", { class: `stat ${t.failed ? "warn" : ""}` }, el("span", { class: "label" }, "Failed attempts"), el("strong", {}, fmtCount(t.failed))),
      el("div", { class: `stat ${t.dead_lettered ? "bad" : ""}` }, el("span", { class: "label" }, "Given up"), el("strong", {}, fmtCount(t.dead_lettered)))),
    el("section", { class: "card" }, el("h2", {}, "Last day"), barChart(stats.buckets, [
      { key: "delivered", label: "Delivered", cls: "s-ok" },
      { key: "failed", label: "Failed", cls: "s-warn" },
      { key: "dead_lettered", label: "Given up", cls: "s-bad" },
    ], { height: 120 })),
    el("section", { class: "card" }, el("h2", {}, "Recent attempts"), table(attempts.data, [
      ["When", (a) => fmtTime(a.at)],
      ["Event", (a) => a.event_id],
      ["Outcome", (a) => outcomePill(a.outcome)],
      ["Status", (a) => a.status ?? (a.error_class || "")],
      ["Latency", (a) => `${a.duration_ms} ms`],
      ["Response", (a) => el("span", { class: "excerpt" }, a.error || a.response_body || "")],
    ], { empty: "Nothing sent yet." })),
    el("section", { class: "card" }, el("h2", {}, "Verifying these webhooks"), verifyHelp(sub)),
    endpointForm(sub),
  );
}

async function deliveries() {
  const q = new URLSearchParams({ limit: "50", since: new Date(Date.now() - 86400e3).toISOString() });
  const after = new URLSearchParams(location.hash.split("?")[1] || "").get("after");
  if (after) q.set("after", after);
  const [page, subs] = await Promise.all([api(`/v1/events?${q}`), api("/v1/subscriptions?limit=200")]);
  const rows = page.data;
  const detail = el("div", { id: "event-detail" });
  const open = async (e) => {
    const aq = new URLSearchParams({ limit: "50", since: e.stored_at });
    const attempts = await attempt(() => api(`/v1/events/${encodeURIComponent(e.id)}/attempts?${aq}`));
    if (!attempts) return;
    const pick = el("select", { name: "subscription" }, subs.data.map((s) => el("option", { value: s.id }, s.url)));
    const resend = el("form", { class: "filters" }, field("Send again to", pick), el("button", { type: "submit" }, "Resend"));
    resend.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const r = await attempt(() => api(`/v1/subscriptions/${encodeURIComponent(pick.value)}/resend`, { method: "POST", body: { seq: e.seq } }));
      if (r) toast("Sent again");
    });
    mount(detail, el("section", { class: "card" },
      el("h2", {}, `${e.type} · ${e.id}`),
      el("pre", { class: "json" }, JSON.stringify(e.data, null, 2)),
      table(attempts.data, [
        ["When", (a) => fmtTime(a.at)],
        ["Endpoint", (a) => a.url],
        ["Outcome", (a) => outcomePill(a.outcome)],
        ["Status", (a) => a.status ?? (a.error_class || "")],
        ["Latency", (a) => `${a.duration_ms} ms`],
      ], { empty: "No attempt for this event (no endpoint asked for its type)." }),
      subs.data.length ? resend : null));
    detail.scrollIntoView({ block: "nearest" });
  };
  mount(
    main,
    el("h1", {}, "Deliveries"),
    el("p", { class: "muted" }, "Events of the last day; pick one to see its attempts and send it again."),
    el("section", { class: "card" }, table(rows, [
      ["When", (e) => fmtTime(e.time)],
      ["Type", (e) => e.type],
      ["Id", (e) => e.id],
    ], { empty: "No event in the last day.", onrow: open }),
    page.next ? el("a", { class: "button ghost", href: `#/deliveries?after=${page.next}` }, "Next page →") : null),
    detail,
  );
}

async function verify() {
  const subs = await api("/v1/subscriptions?limit=200");
  mount(main, el("h1", {}, "Verifying webhooks"), el("section", { class: "card" }, verifyHelp(subs.data[0])));
}

start().catch((e) => refused(e.message));
