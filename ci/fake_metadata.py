#!/usr/bin/env python3
"""A stand-in for the GCE metadata server, for ci/gce_image_smoke.sh: QEMU's user network runs
it per connection (`guestfwd=...-cmd:`), with the connection on stdin/stdout. It answers
GET .../attributes/pvmc-ids with the file STATE/ids and stores the body of
PUT .../guest-attributes/pvmc/verdict in STATE/verdict; requests without the
`Metadata-Flavor: Google` header get 403, as from the real server."""
import os
import sys

state = sys.argv[1]
inp, out = sys.stdin.buffer, sys.stdout.buffer
line = inp.readline().decode()
method, path = line.split()[:2]
headers = {}
while True:
    h = inp.readline().decode().strip()
    if not h:
        break
    k, _, v = h.partition(":")
    headers[k.strip().lower()] = v.strip()
body = inp.read(int(headers.get("content-length", "0") or 0))
with open(os.path.join(state, "requests.log"), "a") as log:
    log.write(f"{method} {path}\n")


def reply(code, text, data=b""):
    out.write(f"HTTP/1.0 {code} {text}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    out.flush()


if headers.get("metadata-flavor") != "Google":
    reply(403, "Forbidden")
elif method == "GET" and path.endswith("/attributes/pvmc-ids"):
    reply(200, "OK", open(os.path.join(state, "ids"), "rb").read())
elif method == "PUT" and path.endswith("/guest-attributes/pvmc/verdict"):
    open(os.path.join(state, "verdict"), "wb").write(body)
    reply(200, "OK")
else:
    reply(404, "Not Found")
