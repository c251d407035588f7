#!/usr/bin/env python3
"""Checks what can be checked of deploy/docker/Dockerfile without a Docker engine: every binary
it copies out of target/release is a binary target of the workspace, both services and the
CLI are in the image, it runs as a non-root user, and its health check command exists."""

import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
meta = json.loads(subprocess.check_output(["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=ROOT))
bins = {t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}

copied = set(re.findall(r"target/release/([A-Za-z0-9_-]+)", dockerfile))
problems = []
if not copied:
    problems.append("copies no binary out of target/release")
problems += [f"copies target/release/{b}, which no workspace package builds" for b in sorted(copied - bins)]
problems += [f"does not ship {b}" for b in ("herald-gateway", "herald-dispatcher", "heraldctl") if b not in copied]
user = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
if not user or user[-1] in ("0", "root"):
    problems.append("does not switch to a non-root USER")
health = re.search(r'HEALTHCHECK .*CMD \["([^"]+)"', dockerfile)
if not health or health.group(1) not in copied:
    problems.append("has no HEALTHCHECK running a shipped binary")
if problems:
    sys.exit("Dockerfile check FAILED: " + "; ".join(problems))
print(f"Dockerfile check: ships {', '.join(sorted(copied))}; non-root; health check via {health.group(1)}")
