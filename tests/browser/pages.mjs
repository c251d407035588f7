// The console and the portal in a real Chromium (Debian's, driven by playwright-core), against a
// running gateway and dispatcher (started by tests/tests/e2e/console.rs, which passes the
// environment below). Plays an operator and a tenant's user, checks what they see against what
// the receiver got, and takes screenshots of the main pages. Exits non-zero on the first
// failed check.
//
// HERALD_GATEWAY      the gateway's base URL (http://127.0.0.1:port)
// HERALD_ADMIN_TOKEN  an admin token (the operator signs in with it; the "operator backend" asks
//                     for portal links with it)
// FRAME_PORT          a free port: http://127.0.0.1:FRAME_PORT may frame the portal (the gateway
//                     was started with it in HERALD_PORTAL_FRAME_ANCESTORS); 127.0.0.2 may not
// PLAYWRIGHT_CORE     the playwright-core module directory; CHROMIUM the browser binary
// SCREENSHOTS         where the screenshots go
import http from "node:http";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";

const { chromium } = await import(path.join(process.env.PLAYWRIGHT_CORE, "index.mjs"));
const GATEWAY = process.env.HERALD_GATEWAY;
const ADMIN = process.env.HERALD_ADMIN_TOKEN;
const FRAME_PORT = Number(process.env.FRAME_PORT);
const SHOTS = process.env.SCREENSHOTS;
fs.mkdirSync(SHOTS, { recursive: true });

let step = "start";
function check(ok, what) {
  if (!ok) throw new Error(`${step}: ${what}`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, fn, timeout = 30000) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`${step}: timed out waiting for ${what}`);
    await sleep(250);
  }
}

// The operator's backend: the API with the admin token.
async function api(method, p, body) {
  const res = await fetch(GATEWAY + p, {
    method,
    headers: { Authorization: `Bearer ${ADMIN}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

// A subscriber: answers 200, except on /flaky while `broken`; records every request.
const received = [];
let broken = true;
const receiver = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const status = req.url === "/flaky" && broken ? 500 : 200;
    received.push({ path: req.url, headers: req.headers, body: Buffer.concat(chunks).toString(), status });
    res.writeHead(status, { "Content-Type": "text/plain" });
    res.end(status === 200 ? "thanks" : "broken, try later");
  });
});
await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
const RX = `http://127.0.0.1:${receiver.address().port}`;
const delivered = (p) => received.filter((r) => r.path === p && r.status === 200);

function verifies(request, secret) {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const signed = `${request.headers["webhook-id"]}.${request.headers["webhook-timestamp"]}.${request.body}`;
  const mac = crypto.createHmac("sha256", key).update(signed).digest("base64");
  return request.headers["webhook-signature"].split(" ").some((s) => s === `v1,${mac}`);
}

// Pages that embed the portal: allowed on 127.0.0.1, another origin on 127.0.0.2.
const framer = http.createServer((req, res) => {
  const src = new URL(req.url, "http://x").searchParams.get("src") || "";
  const safe = src.replace(/[&"<>]/g, (c) => `&#${c.charCodeAt(0)};`);
  res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
  res.end(`<!doctype html><title>Acme app</title><h1>Acme — settings</h1><iframe name="portal" src="${safe}" width="1160" height="720"></iframe>`);
});
await new Promise((r) => framer.listen(FRAME_PORT, "127.0.0.1", r));
const foreign = http.createServer(framer.listeners("request")[0]);
await new Promise((r) => foreign.listen(FRAME_PORT, "127.0.0.2", r));

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ["--no-sandbox", "--disable-gpu"] });
const problems = [];
const framingRefused = [];
async function context() {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 }, locale: "en-GB", timezoneId: "UTC" });
  ctx.on("page", watch);
  return ctx;
}
function watch(page) {
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    if (/violates .*"frame-ancestors/.test(m.text())) framingRefused.push(m.text());
    else if (/Content Security Policy|Refused to/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
}
const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
/** Reloads until `selector` holds `text`. */
async function reloadUntil(page, selector, text) {
  await until(`${selector} to show ${text}`, async () => {
    await page.reload();
    await page.waitForSelector(selector);
    return (await page.locator(selector).innerText()).includes(text);
  });
}

try {
  // ---------------------------------------------------------------- the operator's console
  step = "console sign-in";
  const began = Date.now();
  const ops = await context();
  const page = await ops.newPage();
  await page.goto(`${GATEWAY}/console/`);
  await page.fill("input[name=token]", "not-the-admin-token-0000");
  await page.click("#sign-in button[type=submit]");
  await page.waitForSelector("#sign-in .error:not(:empty)");
  check((await page.innerText("#sign-in .error")).includes("not an admin token"), "a wrong token is refused with a reason");
  await page.fill("input[name=token]", ADMIN);
  await page.click("#sign-in button[type=submit]");
  await page.waitForSelector("[data-testid=delivered]");
  const cookies = await ops.cookies();
  const session = cookies.find((c) => c.name === "herald_console");
  check(session && session.httpOnly && session.sameSite === "Strict", "the session is an HttpOnly, SameSite=Strict cookie");
  check(!(await page.evaluate(() => document.cookie)).includes("herald_console"), "scripts cannot read the session");

  step = "console: create a subscription";
  await page.click("#nav a[data-page=subscriptions]");
  await page.click("text=New subscription");
  await page.fill("#subscription-form input[name=tenant]", "acme");
  await page.fill("#subscription-form input[name=url]", `${RX}/ok`);
  await page.fill("#subscription-form input[name=event_types]", "order.*, herald.ping");
  await page.fill("#subscription-form input[name=description]", "Order events for the warehouse");
  await page.click("#subscription-form button[type=submit]");
  await page.waitForSelector("[data-testid=secret]");
  const secret = (await page.innerText("[data-testid=secret]")).trim();
  check(secret.startsWith("whsec_"), "the secret is revealed once");
  const subId = (await page.evaluate(() => location.hash)).split("/")[2];
  check(subId && subId.startsWith("sub_"), `the page moved to the new subscription (${subId})`);

  step = "console: a broker destination";
  await page.click("#nav a[data-page=subscriptions]");
  await page.click("text=New subscription");
  await page.fill("#subscription-form input[name=tenant]", "ops");
  await page.selectOption("#subscription-form select[name=destination_type]", "nats");
  check(await page.isVisible("#subscription-form input[name=nats_subject]"), "choosing nats shows its subject");
  check(!(await page.isVisible("#subscription-form input[name=amqp_exchange]")), "and hides the AMQP fields");
  await page.fill("#subscription-form input[name=url]", "nats://hooks:pw-never-shown@127.0.0.1:1");
  await page.fill("#subscription-form input[name=nats_subject]", "hooks.{event_type}");
  await page.fill("#subscription-form input[name=event_types]", "audit.*");
  await page.fill("#subscription-form textarea[name=transformation]", "function handler(w) { w.payload = {seen: w.payload.type}; return w; }");
  await page.click("#transformation-try");
  await page.waitForFunction(() => document.querySelector("#transformation-output").textContent.includes("seen"));
  check((await page.innerText("#transformation-output")).includes('"seen": "order.paid"'), "the transformation's test runs beside it");
  await page.click("#subscription-form button[type=submit]");
  await page.waitForSelector("[data-testid=secret]");
  const brokerText = await page.innerText("main");
  check(brokerText.includes("nats: subject hooks.{event_type}"), "the page says where deliveries go");
  check(brokerText.includes("nats://hooks@127.0.0.1:1") && !brokerText.includes("pw-never-shown"), "the broker URL is shown without its password");
  await page.goto(`${page.url().split("#")[0]}#/subscriptions/${subId}`);
  await page.waitForSelector("text=Send test event");

  step = "console: a polling subscription";
  await page.click("#nav a[data-page=subscriptions]");
  await page.click("text=New subscription");
  await page.selectOption("#subscription-form select[name=destination_type]", "polling");
  check(!(await page.isVisible("#subscription-form input[name=url]")), "polling asks for no URL");
  await page.fill("#subscription-form input[name=event_types]", "audit.*");
  await page.click("#subscription-form button[type=submit]");
  await page.waitForSelector("text=polling: read with GET");
  const pollId = (await page.evaluate(() => location.hash)).split("/")[2];
  check((await page.innerText("main h1")).includes(`/v1/subscriptions/${pollId}/poll`), "the page shows where it is polled");

  step = "console: endpoint authentication";
  await page.click("#nav a[data-page=subscriptions]");
  await page.click("text=New subscription");
  await page.fill("#subscription-form input[name=url]", `${RX}/authed`);
  await page.fill("#subscription-form input[name=event_types]", "herald.ping");
  await page.selectOption("#subscription-form select[name=auth_type]", "bearer");
  check(await page.isVisible("#subscription-form input[name=auth_bearer_token]"), "bearer asks for its token");
  check(!(await page.isVisible("#subscription-form input[name=auth_basic_username]")), "and nothing of basic");
  await page.fill("#subscription-form input[name=auth_bearer_token]", "console-bearer-t0ken");
  await page.click("#subscription-form button[type=submit]");
  await page.waitForSelector("[data-testid=secret]");
  check(!(await page.innerText("main")).includes("console-bearer-t0ken"), "the token is not shown");
  await page.click("text=Send test event");
  await until("the authenticated test webhook", () => delivered("/authed").length === 1);
  check(delivered("/authed")[0].headers.authorization === "Bearer console-bearer-t0ken", "it carries the bearer token");
  // Saved again without touching the token: it is kept.
  await page.fill("#subscription-form input[name=description]", "token kept");
  await page.click("#subscription-form button[type=submit]");
  await page.waitForSelector(".toast:has-text('Saved')");
  await page.click("text=Send test event");
  await until("the second authenticated webhook", () => delivered("/authed").length === 2);
  check(delivered("/authed")[1].headers.authorization === "Bearer console-bearer-t0ken", "the token was kept by a save that left it empty");

  step = "console: an inbound source";
  // A test event sent just before leaving a page: its refresh does not redraw the next page
  // (the form below, half filled in) over the user's input.
  await page.click("text=Send test event");
  await page.click("#nav a[data-page=sources]");
  await page.click("text=New source");
  await page.selectOption("#source-form select[name=provider]", "hmac");
  await page.waitForTimeout(2000);
  check(await page.isVisible("#source-form input[name=prefix]"), "a page left is not rendered again over the next one");
  await page.selectOption("#source-form select[name=provider]", "basic");
  check(await page.isVisible("#source-form input[name=username]"), "basic asks for a user name");
  // An `hmac` source set up the way GitHub signs (the suite's inbound tests use the `github`
  // provider itself; this one keeps its counters apart from theirs).
  await page.selectOption("#source-form select[name=provider]", "hmac");
  check(!(await page.isVisible("#source-form input[name=username]")), "hmac does not");
  check(await page.isVisible("#source-form input[name=prefix]"), "hmac asks for the signature's prefix");
  await page.fill("#source-form input[name=tenant]", "acme");
  await page.fill("#source-form input[name=secret]", "gh-console-secret");
  await page.fill("#source-form input[name=event_type]", "github.issues");
  await page.fill("#source-form input[name=header]", "x-hub-signature-256");
  await page.fill("#source-form input[name=prefix]", "sha256=");
  await page.fill("#source-form input[name=id_header]", "x-github-delivery");
  await page.click("#source-form button[type=submit]");
  await page.waitForSelector("[data-testid=source-url]");
  const sourceUrl = (await page.innerText("[data-testid=source-url]")).trim();
  check(sourceUrl.startsWith(`${GATEWAY}/in/src_`), `the source's URL is shown (${sourceUrl})`);
  check(!(await page.innerText("main")).includes("gh-console-secret"), "the secret given is not shown");
  // GitHub's documented procedure: HMAC-SHA256 of the body with the secret, hex, after "sha256=".
  const ghBody = JSON.stringify({ action: "opened", zen: "from the console test" });
  const ghSignature = "sha256=" + crypto.createHmac("sha256", "gh-console-secret").update(ghBody).digest("hex");
  const inbound = await fetch(sourceUrl, {
    method: "POST",
    headers: { "content-type": "application/json", "x-github-event": "issues", "x-github-delivery": "console-1", "x-hub-signature-256": ghSignature },
    body: ghBody,
  });
  check(inbound.status === 202, `a request GitHub would sign is accepted (${inbound.status})`);
  const forged = await fetch(sourceUrl, { method: "POST", headers: { "x-github-event": "issues", "x-hub-signature-256": "sha256=00" }, body: ghBody });
  check(forged.status === 401, "a forged one is not");
  await page.click("#nav a[data-page=sources]");
  await reloadUntil(page, "main table", sourceUrl.split("/").pop());
  check((await page.innerText("main table")).includes("hmac"), "the sources list shows it");
  page.once("dialog", (d) => d.accept());
  await page.click(`tr:has-text("${sourceUrl.split("/").pop()}") >> text=Delete`);
  await page.waitForSelector(".toast:has-text('Deleted')");
  check((await fetch(sourceUrl, { method: "POST", body: ghBody })).status === 404, "a deleted source's URL answers 404");
  await page.goto(`${page.url().split("#")[0]}#/subscriptions/${subId}`);
  await page.waitForSelector("text=Send test event");

  step = "console: send a test event";
  await page.click("text=Send test event");
  await until("the test webhook", () => delivered("/ok").length === 1);
  check(verifies(delivered("/ok")[0], secret), "the webhook verifies with the secret the console showed");
  check(JSON.parse(delivered("/ok")[0].body).type === "herald.ping", "it is a herald.ping");
  await reloadUntil(page, "main", "delivered");
  await until("the statistics to count it", async () => {
    await page.reload();
    await page.waitForSelector("[data-testid=sub-delivered] strong");
    return (await page.innerText("[data-testid=sub-delivered] strong")) === String(delivered("/ok").length);
  });
  check(!(await page.innerText("main")).includes(secret), "the secret is not shown again");
  await shot(page, "console-subscription");

  step = "console: force a failure";
  await page.click("#nav a[data-page=subscriptions]");
  await page.click("text=New subscription");
  await page.fill("#subscription-form input[name=tenant]", "acme");
  await page.fill("#subscription-form input[name=url]", `${RX}/flaky`);
  await page.fill("#subscription-form input[name=event_types]", "order.*, herald.ping");
  await page.fill("#subscription-form input[name=retry_schedule]", "1s");
  await page.click("#subscription-form button[type=submit]");
  await page.waitForSelector("[data-testid=secret]");
  const flakyId = (await page.evaluate(() => location.hash)).split("/")[2];
  await page.click("text=Send test event");
  await until("two failed attempts", () => received.filter((r) => r.path === "/flaky").length >= 2);

  step = "console: redrive the dead letter";
  await page.click("#nav a[data-page=dead-letters]");
  await reloadUntil(page, "main table", flakyId);
  await shot(page, "console-dead-letters");
  broken = false; // the subscriber fixed their endpoint
  const letterBox = page.locator(`tr:has-text("${flakyId}") input[type=checkbox]`).first();
  await letterBox.check();
  await page.click("#redrive");
  await page.waitForSelector(".toast:has-text('1 redriven')");
  await until("the redriven webhook", () => delivered("/flaky").length === 1);
  await page.goto(`${GATEWAY}/console/#/subscriptions/${flakyId}`);
  await reloadUntil(page, "main table", "delivered");
  const attemptsText = await page.innerText("main table");
  check(attemptsText.includes("dead letter") && attemptsText.includes("500"), "the failed attempts are listed with their status");

  step = "console: events, filtered without a reload";
  await api("POST", "/v1/events", { id: "ord-1001", type: "order.paid", tenant: "acme", data: { order: 1001, amount: 4200 } });
  await api("POST", "/v1/events", { id: "ord-1002", type: "order.refunded", tenant: "acme", data: { order: 1002 } });
  await until("both order events delivered to /ok", () => delivered("/ok").filter((r) => r.body.includes('"order.')).length === 2);
  await page.click("#nav a[data-page=events]");
  await page.waitForSelector("main table");
  await page.evaluate(() => (window.__sameDocument = 42));
  await page.fill("form.filters input[name=type]", "order.paid");
  await page.click("form.filters button[type=submit]");
  await until("the filtered list", async () => {
    const text = await page.innerText("main");
    return text.includes("ord-1001") && !text.includes("ord-1002");
  });
  check((await page.evaluate(() => window.__sameDocument)) === 42, "changing a filter does not reload the page");
  await shot(page, "console-events");
  await page.click("text=ord-1001");
  await page.waitForSelector("#resend");
  await reloadUntil(page, "main", "delivered");
  const eventText = await page.innerText("main");
  check(eventText.includes('"amount": 4200') && eventText.includes(subId), "the event's data and its deliveries are shown");
  await page.selectOption("#resend select", subId);
  await page.click("#resend button[type=submit]");
  await page.waitForSelector(".toast:has-text('Resent')");
  await until("the resent webhook", () => delivered("/ok").filter((r) => r.body.includes("ord-1001")).length === 2);
  await shot(page, "console-event");

  step = "console: overview counts equal the deliveries made";
  await page.click("#nav a[data-page=overview]");
  await until("the overview to count every delivery", async () => {
    await page.reload();
    await page.waitForSelector("[data-testid=delivered] strong");
    const shown = Number((await page.innerText("[data-testid=delivered] strong")).replace(/\D/g, ""));
    return shown === received.filter((r) => r.status === 200).length;
  });
  const failedShown = Number((await page.innerText("[data-testid=failed] strong")).replace(/\D/g, ""));
  const deadShown = Number((await page.innerText("[data-testid=dead-lettered] strong")).replace(/\D/g, ""));
  check(failedShown + deadShown === received.filter((r) => r.status !== 200).length, `failed ${failedShown} + dead ${deadShown} = the 500s answered`);
  check(deadShown === 1, "one dead letter");
  await shot(page, "console-overview");

  // ---------------------------------------------------------------- the tenant's portal
  step = "portal: the operator's backend prepares";
  await api("POST", "/v1/event-types", { name: "order.paid", description: "An order was paid" });
  await api("POST", "/v1/event-types", { name: "order.shipped", description: "An order left the warehouse" });
  await api("POST", "/v1/subscriptions", { url: `${RX}/globex-private`, event_types: ["order.*"], tenant: "globex" });
  const theme = { name: "Acme Shop", primary_color: "#6b3fa0" };
  const link = await api("POST", "/v1/portal/sessions", { tenant: "acme", theme });
  check(link.url.startsWith(`${GATEWAY}/portal/#code=`), "the link points at the portal with the code in the fragment");

  step = "portal: a link opens a session of its tenant";
  const user = await context();
  const portal = await user.newPage();
  await portal.goto(link.url);
  await portal.waitForSelector("main table");
  const listing = await portal.innerText("main");
  check(listing.includes(`${RX}/ok`) && listing.includes(`${RX}/flaky`), "the tenant's endpoints are listed");
  check(!listing.includes("globex-private"), "another tenant's endpoint is not");
  check((await portal.evaluate(() => location.href)).endsWith("/portal/#/endpoints"), "the code left the address bar");
  check((await portal.innerText("#product")) === "Acme Shop", "the theme's name is shown");
  const buttonColour = await portal.evaluate(() => getComputedStyle(document.querySelector(".button")).backgroundColor);
  check(buttonColour === "rgb(107, 63, 160)", `the theme's colour applies (${buttonColour})`);
  const portalCookie = (await user.cookies()).find((c) => c.name === "herald_portal");
  check(portalCookie && portalCookie.httpOnly && portalCookie.sameSite === "Lax", "an HttpOnly, SameSite=Lax cookie");
  await shot(portal, "portal-endpoints");

  step = "portal: add an endpoint, picking types from the catalog";
  await portal.click("text=Add endpoint");
  await portal.fill("#endpoint-form input[name=url]", `${RX}/portal-new`);
  await portal.fill("#endpoint-form input[name=description]", "Our ERP");
  await portal.check("#endpoint-form input[value='order.paid']");
  await portal.fill("#endpoint-form input[name=other_types]", "herald.ping");
  await portal.click("#endpoint-form button[type=submit]");
  await portal.waitForSelector("[data-testid=secret]");
  const portalSecret = (await portal.innerText("[data-testid=secret]")).trim();
  await portal.click("text=Send test");
  await until("the portal's test webhook", () => delivered("/portal-new").length === 1);
  check(verifies(delivered("/portal-new")[0], portalSecret), "it verifies with the secret the portal revealed");
  await api("POST", "/v1/events", { id: "ord-2001", type: "order.paid", tenant: "acme", data: { order: 2001 } });
  await api("POST", "/v1/events", { id: "ord-2002", type: "order.shipped", tenant: "acme", data: { order: 2002 } });
  await until("order.paid to the new endpoint", () => delivered("/portal-new").some((r) => r.body.includes("ord-2001")));
  await sleep(500);
  check(!delivered("/portal-new").some((r) => r.body.includes("ord-2002")), "only the types picked are delivered");
  await reloadUntil(portal, "main table", "delivered");
  await shot(portal, "portal-endpoint");

  step = "portal: deliveries";
  await portal.click("#nav a[data-page=deliveries]");
  await portal.waitForSelector("main table");
  await portal.click("text=ord-2001");
  await portal.waitForSelector("#event-detail table");
  check((await portal.innerText("#event-detail")).includes(`${RX}/portal-new`), "the event's attempts are shown");
  check(!(await portal.innerText("main")).includes("globex"), "nothing of another tenant");
  await shot(portal, "portal-deliveries");

  step = "portal: a link cannot be opened twice";
  const again = await (await context()).newPage();
  await again.goto(link.url);
  await again.waitForSelector("#refused");
  check((await again.innerText("#refused")).includes("already opened"), "the second opening is refused with the reason");

  step = "portal: sessions expire";
  const short = await api("POST", "/v1/portal/sessions", { tenant: "acme", expires_in: "3s" });
  const brief = await (await context()).newPage();
  await brief.goto(short.url);
  await brief.waitForSelector("main table");
  await sleep(3500);
  await brief.click("#nav a[data-page=deliveries]");
  await brief.waitForSelector("#refused");
  check((await brief.innerText("#refused")).includes("session has ended"), "an expired session is told so");

  step = "portal: a polling endpoint, where the link grants it";
  const pollingLink = await api("POST", "/v1/portal/sessions", { tenant: "acme", destinations: ["polling"] });
  const poller = await (await context()).newPage();
  await poller.goto(pollingLink.url);
  await poller.waitForSelector("main table");
  await poller.click("text=Add endpoint");
  await poller.selectOption("#endpoint-form select[name=destination_type]", "polling");
  check(!(await poller.isVisible("#endpoint-form input[name=url]")), "polling asks for no URL");
  await poller.fill("#endpoint-form input[name=other_types]", "order.*");
  await poller.click("#endpoint-form button[type=submit]");
  await poller.waitForSelector("[data-testid=polling-help]");
  check((await poller.innerText("[data-testid=polling-help]")).includes("/poll?cursor="), "the endpoint says how it is polled");
  await poller.click("#nav a[data-page=endpoints]");
  await poller.waitForSelector("main table");
  check(/\/v1\/subscriptions\/sub_\w+\/poll/.test(await poller.innerText("main table")), "the endpoints list shows the polling endpoint");

  step = "portal: inside an iframe of an allowed origin";
  const framed = await api("POST", "/v1/portal/sessions", { tenant: "acme", theme });
  const host = await (await context()).newPage();
  await host.goto(`http://127.0.0.1:${FRAME_PORT}/embed?src=${encodeURIComponent(framed.url)}`);
  const frame = await until("the portal frame", async () => host.frame({ name: "portal" }));
  await frame.waitForSelector("main table");
  check((await frame.innerText("main")).includes(`${RX}/portal-new`), "the framed portal shows the tenant's endpoints");
  await shot(host, "portal-embedded");

  check(framingRefused.length === 0, `no framing was refused so far: ${framingRefused}`);
  step = "portal: refused inside another origin's frame";
  const refused = await api("POST", "/v1/portal/sessions", { tenant: "acme" });
  const other = await (await context()).newPage();
  await other.goto(`http://127.0.0.2:${FRAME_PORT}/embed?src=${encodeURIComponent(refused.url)}`);
  await other.waitForLoadState("load");
  await sleep(1000);
  const blocked = other.frame({ name: "portal" });
  const ran = blocked ? await blocked.locator("#main").count().catch(() => 0) : 0;
  check(ran === 0, "the portal did not load inside a page of another origin");
  // (Chromium names the framed page's origin, the gateway's, in its report.)
  check(framingRefused.some((m) => m.includes(`Framing '${GATEWAY}/'`)), `the browser refused the framing: ${framingRefused}`);
  // Its script never ran, so the link is still unspent: it opens stand-alone.
  const alone = await (await context()).newPage();
  await alone.goto(refused.url);
  await alone.waitForSelector("main table");

  step = "console: the operator ends a portal session";
  await page.goto(`${GATEWAY}/console/#/sessions`);
  // A hash change renders in place: wait for this page's heading, not any table still shown.
  await page.waitForSelector("main h1:has-text('Sessions')");
  await page.waitForSelector("main table");
  const sessionsText = await page.innerText("main table");
  check(sessionsText.includes("console") && sessionsText.includes("acme") && sessionsText.includes("in force"), "the console lists the live sessions");
  await shot(page, "console-sessions");
  // Newest first: the last portal session opened is the stand-alone page's.
  await page.locator("main table tbody tr:has-text('portal') button").first().click();
  await page.waitForSelector(".toast:has-text('Session ended')");
  await alone.click("#nav a[data-page=deliveries]");
  await alone.waitForSelector("#refused");
  check((await alone.innerText("#refused")).includes("session has ended"), "the ended session is told so at its next click");

  step = "console: an id in a crafted link stays one path segment";
  const paths = [];
  page.on("request", (r) => paths.push(new URL(r.url()).pathname));
  await page.goto(`${GATEWAY}/console/#/subscriptions/..%2F..%2Fv1%2Fsessions`);
  await page.waitForSelector("main .error");
  check(paths.some((p) => p.startsWith("/v1/subscriptions/")), `the page asked for the subscription: ${paths}`);
  check(!paths.some((p) => p.startsWith("/v1/sessions")), `a crafted id reached another route: ${paths}`);

  step = "pages ran without errors or policy violations";
  check(problems.length === 0, problems.join("\n"));
  const seconds = (Date.now() - began) / 1000;
  console.log(JSON.stringify({ ok: true, seconds, received: received.length, screenshots: fs.readdirSync(SHOTS) }));
} finally {
  await browser.close();
  // The dispatcher keeps connections to the receiver open; do not wait for them to idle out.
  for (const server of [receiver, framer, foreign]) {
    server.close();
    server.closeAllConnections();
  }
}
