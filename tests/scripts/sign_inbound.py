"""Signs a request body as a provider does and prints the headers it would send as JSON.

Usage: sign_inbound.py standard-webhooks|shopify SECRET BODY_FILE [MSG_ID] [TIMESTAMP]

standard-webhooks: the Standard Webhooks reference library (`standardwebhooks` on PyPI).
shopify: the procedure Shopify documents for X-Shopify-Hmac-Sha256 (base64 of the HMAC-SHA256
of the raw body with the app's secret), in the standard library.
"""

import base64
import datetime
import hashlib
import hmac
import json
import sys

provider, secret, path = sys.argv[1:4]
body = open(path, "rb").read()
if provider == "standard-webhooks":
    from standardwebhooks.webhooks import Webhook

    msg_id = sys.argv[4]
    ts = datetime.datetime.fromtimestamp(int(sys.argv[5]), tz=datetime.timezone.utc)
    signature = Webhook(secret).sign(msg_id, ts, body.decode("utf-8"))
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(ts.timestamp())), "webhook-signature": signature}
elif provider == "shopify":
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    headers = {"x-shopify-hmac-sha256": base64.b64encode(digest).decode()}
else:
    raise SystemExit(f"unknown provider {provider}")
print(json.dumps(headers))
