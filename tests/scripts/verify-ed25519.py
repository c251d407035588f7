#!/usr/bin/env python3
"""Verifies a Standard Webhooks `v1a` (Ed25519) signature with an implementation independent of
Herald's: the `cryptography` package (OpenSSL).

Usage: verify-ed25519.py WHPK_KEY WEBHOOK_ID WEBHOOK_TIMESTAMP WEBHOOK_SIGNATURE < body
Prints `valid` and exits 0 if any `v1a,` entry of the header verifies the body; otherwise
prints `invalid` and exits 1. Exits 2 on bad usage.
"""
import base64
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def main() -> int:
    if len(sys.argv) != 5 or not sys.argv[1].startswith("whpk_"):
        print(__doc__, file=sys.stderr)
        return 2
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(sys.argv[1][len("whpk_"):]))
    msg_id, timestamp, header = sys.argv[2], sys.argv[3], sys.argv[4]
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + sys.stdin.buffer.read()
    for entry in header.split(" "):
        version, _, signature = entry.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(signature), signed)
        except (InvalidSignature, ValueError):
            continue
        print("valid")
        return 0
    print("invalid")
    return 1


if __name__ == "__main__":
    sys.exit(main())
