// Shared by the console and the portal: API calls with the session's CSRF token, a DOM builder
// that never parses HTML (every value is text), SVG charts, and small formatting helpers.
// Plain modules for the browser: no build step, no dependency, nothing loaded from elsewhere.

let csrf = null;

/** Calls the gateway's API as the page's session. Throws an Error whose message is the
 * problem's `detail` when the answer is not 2xx. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (csrf) headers["X-Herald-Csrf"] = csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const err = new Error((data && (data.detail || data.title)) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    err.field = data && data.field;
    throw err;
  }
  return data;
}

/** Starts or resumes a session: `GET /v1/session?kind=…` with the cookie; null without one. */
export async function resume(kind) {
  try {
    const s = await api(`/v1/session?kind=${kind}`);
    csrf = s.csrf;
    return s;
  } catch (e) {
    if (e.status === 401) return null;
    throw e;
  }
}

/** Remembers a session just opened. */
export function adopt(session) {
  csrf = session.csrf;
}

export async function signOut() {
  try {
    await api("/v1/session", { method: "DELETE" });
  } finally {
    csrf = null;
  }
}

/** Builds an element: `el("a", {href: "#/x", class: "link", onclick}, "text", child…)`. Text
 * children become text nodes, so nothing is ever parsed as HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** A button that runs `onclick`. */
export function button(label, onclick, cls) {
  return el("button", { type: "button", class: cls, onclick }, label);
}

/** Replaces the children of `node`. */
export function mount(node, ...children) {
  node.replaceChildren();
  for (const c of children.flat(Infinity)) if (c) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

/** A message that goes away. */
export function toast(text, kind = "ok") {
  const box = document.getElementById("toasts") || document.body.appendChild(el("div", { id: "toasts" }));
  const t = el("div", { class: `toast ${kind}`, role: "status" }, text);
  box.append(t);
  setTimeout(() => t.remove(), kind === "error" ? 8000 : 4000);
}

/** Runs `fn`, showing its error as a toast. */
export async function attempt(fn) {
  try {
    return await fn();
  } catch (e) {
    toast(e.message, "error");
    return undefined;
  }
}

export function fmtTime(t) {
  if (!t) return "";
  const d = new Date(t);
  return isNaN(d) ? t : d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function fmtCount(n) {
  return n === undefined || n === null ? "–" : Number(n).toLocaleString();
}

export function fmtRate(r) {
  return r === undefined || r === null ? "–" : `${(r * 100).toFixed(r >= 0.9995 || r === 0 ? 0 : 1)} %`;
}

/** A status pill. */
export function pill(text, kind) {
  return el("span", { class: `pill ${kind || text}` }, text);
}

export function outcomePill(outcome) {
  const kind = { delivered: "ok", retry: "warn", dead_letter: "bad", skipped: "muted" }[outcome] || "muted";
  return pill(outcome.replace("_", " "), kind);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const c of children) if (c) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

/** A stacked bar chart of `buckets` (`{start, …counts}`) for `series` (`[{key, label, cls}]`). */
export function barChart(buckets, series, { height = 160, label = "" } = {}) {
  const width = 720;
  const pad = { l: 44, r: 8, t: 10, b: 22 };
  const totals = buckets.map((b) => series.reduce((s, x) => s + (b[x.key] || 0), 0));
  const max = Math.max(1, ...totals);
  const step = (width - pad.l - pad.r) / Math.max(1, buckets.length);
  const y = (v) => pad.t + (height - pad.t - pad.b) * (1 - v / max);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label });
  for (const frac of [0, 0.5, 1]) {
    const v = Math.round(max * frac);
    root.append(svg("line", { x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v), class: "grid" }));
    root.append(svg("text", { x: pad.l - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, fmtCount(v)));
  }
  buckets.forEach((b, i) => {
    let base = 0;
    const x = pad.l + i * step + step * 0.12;
    for (const s of series) {
      const v = b[s.key] || 0;
      if (!v) continue;
      const rect = svg("rect", { x, width: Math.max(1, step * 0.76), y: y(base + v), height: y(base) - y(base + v), class: s.cls });
      rect.append(svg("title", {}, `${fmtTime(b.start)} — ${s.label}: ${fmtCount(v)}`));
      root.append(rect);
      base += v;
    }
  });
  const ticks = [0, Math.floor(buckets.length / 2), buckets.length - 1];
  for (const i of ticks) {
    if (!buckets[i]) continue;
    const d = new Date(buckets[i].start);
    const text = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
    root.append(svg("text", { x: pad.l + i * step + step / 2, y: height - 6, class: "axis", "text-anchor": "middle" }, text));
  }
  const legend = el(
    "div",
    { class: "legend" },
    series.map((s) => el("span", {}, el("i", { class: `swatch ${s.cls}` }), s.label)),
  );
  return el("figure", { class: "chart-box" }, root, legend);
}

/** A table: `columns` are `[header, row => cell]`. */
export function table(rows, columns, { empty = "Nothing here yet.", onrow } = {}) {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, columns.map(([h]) => el("th", {}, h)))),
    el(
      "tbody",
      {},
      rows.map((r) =>
        el(
          "tr",
          { class: onrow ? "clickable" : undefined, onclick: onrow ? () => onrow(r) : undefined },
          columns.map(([, f]) => el("td", {}, f(r))),
        ),
      ),
    ),
  );
}

/** A labelled form field. */
export function field(label, input, hint) {
  return el("label", { class: "field" }, el("span", {}, label), input, hint ? el("small", {}, hint) : null);
}

/** The values of a form's named inputs. */
export function values(form) {
  const out = {};
  for (const input of form.querySelectorAll("[name]")) {
    if (input.type === "checkbox") {
      if (input.dataset.group) {
        (out[input.dataset.group] ||= []);
        if (input.checked) out[input.dataset.group].push(input.value);
      } else out[input.name] = input.checked;
    } else out[input.name] = input.value.trim();
  }
  return out;
}

/** Splits "a, b c" into ["a", "b", "c"]. */
export function words(text) {
  return (text || "").split(/[\s,]+/).filter(Boolean);
}

/** A secret shown once, with a copy button. */
export function secretBox(title, secret, note) {
  const code = el("code", { class: "secret", "data-testid": "secret" }, secret);
  const copy = el("button", { type: "button", class: "ghost", onclick: () => navigator.clipboard && navigator.clipboard.writeText(secret).then(() => toast("Copied")) }, "Copy");
  return el("div", { class: "reveal", role: "alert" }, el("strong", {}, title), el("div", { class: "row" }, code, copy), el("small", {}, note));
}

/** How subscribers check a signature, for the scheme and key they have. */
export function verifyHelp(sub) {
  const ed = sub && sub.signature_scheme === "ed25519";
  return el(
    "div",
    { class: "help" },
    el("p", {}, "Every webhook carries three headers: ", el("code", {}, "webhook-id"), ", ", el("code", {}, "webhook-timestamp"), " and ", el("code", {}, "webhook-signature"), ". The signed content is ", el("code", {}, "{webhook-id}.{webhook-timestamp}.{body}"), ", with the body exactly as received."),
    ed
      ? el("p", {}, "This endpoint's webhooks are signed with Ed25519 (", el("code", {}, "v1a,<base64 signature>"), "). Verify with the public key ", el("code", {}, sub.public_key || ""), " (base64 after ", el("code", {}, "whpk_"), ").")
      : el("p", {}, "This endpoint's webhooks are signed with HMAC-SHA256 (", el("code", {}, "v1,<base64 signature>"), "). Compute HMAC-SHA256 over the signed content with the secret (base64 after ", el("code", {}, "whsec_"), ") and compare in constant time with each signature in the header."),
    el("p", {}, "Refuse timestamps more than five minutes from your clock, and treat ", el("code", {}, "webhook-id"), " as an idempotency key: a webhook may arrive more than once."),
    el("p", {}, "Libraries that implement the Standard Webhooks scheme (", el("code", {}, "standardwebhooks"), " for Python, JavaScript, Go, Rust, Java, Ruby, PHP) verify these headers in one call."),
  );
}
