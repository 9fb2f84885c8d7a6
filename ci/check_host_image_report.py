#!/usr/bin/env python3
"""Checks a report of `--target qemu --host-image` on a host without PVM (CI's Debian L1):
every hvm64 instance PASS, or FAIL/XFAIL/SKIP with its reason; every pv-* instance SKIP with
the reason; nothing CRASH or ERROR; the run complete. Exit 1 naming each violation."""
import json
import sys

r = json.load(open(sys.argv[1]))
bad = []
if r.get("state") != "complete":
    bad.append(f"run state {r.get('state')!r}")
cases = r.get("cases", [])
if not cases:
    bad.append("no instances")
for c in cases:
    o, env, detail = c["outcome"], c["env"], c.get("detail", "")
    if o in ("crash", "error"):
        bad.append(f"{c['id']}: {o}: {detail}")
    elif env.startswith("pv-") and (o != "skip" or not detail):
        bad.append(f"{c['id']}: {o}, want SKIP with the reason")
    elif env == "hvm64" and o != "pass" and not detail:
        bad.append(f"{c['id']}: {o} without a reason")
for b in bad:
    print(f"check_host_image_report: {b}", file=sys.stderr)
passed = sum(1 for c in cases if c["outcome"] == "pass")
print(f"check_host_image_report: {len(cases)} instances, {passed} PASS, {len(bad)} problems")
sys.exit(1 if bad else 0)
