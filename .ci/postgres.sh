#!/usr/bin/env bash
# Starts a PostgreSQL server for the tests of the PostgreSQL backend (Debian's packages, a
# cluster of its own on 127.0.0.1:55432, started with pg_ctlcluster) and prints the URL of a
# database they may create schemas in. Idempotent: a second run starts what is stopped.
#
#   export QIAOMEN_TEST_POSTGRES=$(bash .ci/postgres.sh)
#   cargo test --workspace
set -euo pipefail
PORT=${QIAOMEN_PG_PORT:-55432}
if ! command -v pg_createcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
VERSION=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$VERSION qiaomen"; then
  pg_createcluster "$VERSION" qiaomen --port "$PORT" -- --auth=trust >/dev/null
fi
# Everything but the URL goes to stderr: the caller reads stdout.
pg_ctlcluster "$VERSION" qiaomen start >&2 2>/dev/null || pg_ctlcluster "$VERSION" qiaomen status >/dev/null
for _ in $(seq 50); do
  runuser -u postgres -- psql -h 127.0.0.1 -p "$PORT" -Atc "SELECT 1" >/dev/null 2>&1 && break
  sleep 0.2
done
runuser -u postgres -- psql -h 127.0.0.1 -p "$PORT" -Atc \
  "SELECT 1 FROM pg_database WHERE datname = 'qiaomen_test'" | grep -q 1 ||
  runuser -u postgres -- createdb -h 127.0.0.1 -p "$PORT" qiaomen_test
echo "postgres://postgres@127.0.0.1:$PORT/qiaomen_test"
