#!/usr/bin/env bash
# The JSON API under a schema-driven fuzzer: schemathesis generates requests from
# /api/v1/openapi.json and checks that no answer is a 5xx and every answer matches the
# document (status codes, content types, bodies). It runs against a real server process on
# 127.0.0.1 with the demo county, signed in as its town supervisor; bounded in examples and
# time. Needs target/debug/qiaomen-server and `pip install schemathesis`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/debug/qiaomen-server"
DATA=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$DATA"' EXIT
"$BIN" --data-dir "$DATA" admin seed-demo > "$DATA/seed.txt"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" --data-dir "$DATA" --listen "127.0.0.1:$PORT" > "$DATA/server.log" 2>&1 &
SERVER=$!
PASSWORD=$(awk '$1 == "s-liu" {print $3}' "$DATA/seed.txt")
TOKEN=$(PORT="$PORT" PASSWORD="$PASSWORD" python3 - <<'PY'
import json, os, time, urllib.request
base = f"http://127.0.0.1:{os.environ['PORT']}"
for _ in range(100):
    try:
        urllib.request.urlopen(base + "/healthz", timeout=1).read()
        break
    except OSError:
        time.sleep(0.1)
body = json.dumps({"login": "s-liu", "password": os.environ["PASSWORD"]}).encode()
req = urllib.request.Request(base + "/v1/login", data=body, headers={"content-type": "application/json"})
print(json.load(urllib.request.urlopen(req, timeout=10))["token"])
PY
)
# Logout would end the session the rest of the run uses.
# The photo upload's media type is raw bytes (tests/api_fuzz_hooks.py).
export PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=api_fuzz_hooks
timeout 600 schemathesis --config-file tests/api-fuzz.toml run "http://127.0.0.1:$PORT/api/v1/openapi.json" \
  -H "Authorization: Bearer $TOKEN" --exclude-path /v1/logout \
  --max-examples "${QIAOMEN_API_FUZZ_EXAMPLES:-50}" --seed 1
