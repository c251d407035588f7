// Signs a request body the way a provider does, with the provider's own library, and prints
// the headers it would send as JSON. Usage:
//   node sign-inbound.mjs NPM_PREFIX stripe|github SECRET BODY_FILE [TIMESTAMP]
// Stripe: stripe-node's documented test helper (webhooks.generateTestHeaderString).
// GitHub: @octokit/webhooks-methods' sign(), what GitHub's own docs point to.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const [prefix, provider, secret, file, timestamp] = process.argv.slice(2);
const payload = readFileSync(file, "utf8");
const require = createRequire(`${prefix}/node_modules/`);
let headers;
if (provider === "stripe") {
  const Stripe = require("stripe");
  const stripe = new Stripe("sk_test_unused");
  const options = { payload, secret };
  if (timestamp) options.timestamp = Number(timestamp);
  headers = { "stripe-signature": stripe.webhooks.generateTestHeaderString(options) };
} else if (provider === "github") {
  const entry = `${prefix}/node_modules/@octokit/webhooks-methods/dist-node/index.js`;
  const { sign } = await import(pathToFileURL(entry).href);
  headers = { "x-hub-signature-256": await sign(secret, payload) };
} else {
  throw new Error(`unknown provider ${provider}`);
}
process.stdout.write(JSON.stringify(headers));
