#!/usr/bin/env bash
# Property-based run of the API against its own contract: builds `runway`, starts it on a fresh
# SQLite folder and on a fresh PostgreSQL database (as the least-privilege role), makes a tenant
# and a tenant key, and runs schemathesis against /openapi.json with the admin token and with the
# tenant key. Fails on any 5xx, any response that violates its schema, any undocumented status
# code or content type. Bounded: RUNWAY_SCHEMATHESIS_EXAMPLES test cases per operation and phase.
#
#   bash .ci/schemathesis.sh [sqlite|postgres]...   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${RUNWAY_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
EXAMPLES="${RUNWAY_SCHEMATHESIS_EXAMPLES:-10}"
SEED="${RUNWAY_SCHEMATHESIS_SEED:-7400}"
ADMIN="rw_admin_schemathesis_0123456789abcdefghijklmnop"
MASTER_KEY="c2NoZW1hdGhlc2lzLW1hc3Rlci1rZXktMzItYnl0ZXM="
# .ci/run installs schemathesis in this venv (on Python 3.12 or later); `schemathesis` on PATH otherwise.
SCHEMATHESIS="${RUNWAY_SCHEMATHESIS:-/var/tmp/runway-schemathesis-venv/bin/schemathesis}"
[ -x "$SCHEMATHESIS" ] || SCHEMATHESIS=schemathesis
ENGINES=("$@")
[ ${#ENGINES[@]} -eq 0 ] && ENGINES=(sqlite postgres)

cargo build -q -p runway --bin runway
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BIN="$TARGET_DIR/debug/runway"
WORK=$(mktemp -d -t runway-schemathesis-XXXXXX)
SERVER_PID=""
DATABASE=""

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "$DATABASE" ]; then psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS \"$DATABASE\" WITH (FORCE)" >/dev/null 2>&1 || true; fi
  SERVER_PID=""; DATABASE=""
}
trap 'cleanup; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

api() { # method path token [json body] → prints the body; fails unless 2xx
  local method=$1 path=$2 token=$3 body=${4:-}
  if [ -n "$body" ]; then
    curl -sS --fail-with-body -X "$method" "$BASE$path" -H "authorization: Bearer $token" -H 'content-type: application/json' -d "$body"
  else
    curl -sS --fail-with-body -X "$method" "$BASE$path" -H "authorization: Bearer $token"
  fi
}

# Real sub-resources, so operations on `{endpoint}`, `{message}`, `{key_id}` and flag `{key}` reach
# their handlers' bodies rather than only their 404s. Made again before each run: the one before
# may have deleted them.
fixtures() {
  api POST /v1/event-types "$ADMIN" '{"name":"st.checked","schema":null,"version":"1.0"}' >/dev/null 2>&1 || true
  export RUNWAY_ST_ENDPOINT RUNWAY_ST_MESSAGE RUNWAY_ST_KEY
  RUNWAY_ST_ENDPOINT=$(api POST /v1/tenants/schemathesis/webhooks "$ADMIN" '{"url":"https://hooks.example.com/st"}' \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  api POST /v1/tenants/schemathesis/events "$ADMIN" '{"type":"st.checked","payload":{"n":1}}' >/dev/null
  RUNWAY_ST_MESSAGE=$(api GET "/v1/tenants/schemathesis/webhooks/$RUNWAY_ST_ENDPOINT/messages" "$ADMIN" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])')
  RUNWAY_ST_KEY=$(api POST /v1/tenants/schemathesis/keys "$ADMIN" '{"name":"victim","scopes":["tenants:read"]}' \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  api POST /v1/flags "$ADMIN" '{"key":"st-flag","environments":{"production":{"enabled":true}}}' >/dev/null 2>&1 || true
}

run_engine() {
  local engine=$1 dir="$WORK/$1" port
  mkdir -p "$dir"
  port=$(free_port)
  BASE="http://127.0.0.1:$port"
  local env=(
    RUNWAY_SERVER_LISTEN="127.0.0.1:$port"
    RUNWAY_SERVER_METRICS_LISTEN=off
    RUNWAY_ADMIN_TOKEN="$ADMIN"
    RUNWAY_CRYPTO_MASTER_KEY="$MASTER_KEY"
    RUNWAY_LOG_LEVEL=warn
    # Generated requests come fast; the largest plan keeps 429s rare (they are documented anyway).
    RUNWAY_TENANTS_DEFAULT_PLAN=enterprise
    RUNWAY_AUTH_SERVICE_KEY_PLAN=enterprise
    # Generated webhook URLs point anywhere: nothing is sent from this run.
    RUNWAY_EVENTS_WORKER_ENABLED=false
  )
  case "$engine" in
    sqlite)
      env+=(RUNWAY_DATABASE_URL="sqlite://$dir/runway.db")
      ;;
    postgres)
      DATABASE="rwt_schemathesis_$$"
      psql "$PG_URL/postgres" -qc "CREATE DATABASE \"$DATABASE\"" >/dev/null
      # Migrate as the owner, then connect as the least-privilege role, as in production.
      RUNWAY_DATABASE_URL="$PG_URL/$DATABASE" RUNWAY_CRYPTO_MASTER_KEY="$MASTER_KEY" "$BIN" migrate >/dev/null
      psql "$PG_URL/$DATABASE" -qf deploy/postgres/app-role.sql >/dev/null
      env+=(RUNWAY_DATABASE_URL="postgres://runway_app@${PG_URL#*@}/$DATABASE"
            RUNWAY_DATABASE_MIGRATION_URL="$PG_URL/$DATABASE")
      ;;
    *) echo "unknown engine $engine (sqlite or postgres)" >&2; exit 2 ;;
  esac
  (cd "$dir" && exec env "${env[@]}" "$BIN" serve >"$dir/server.log" 2>&1) &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    curl -sf "$BASE/readyz" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$dir/server.log"; exit 1; }
    sleep 0.1
  done
  curl -sf "$BASE/readyz" >/dev/null

  export RUNWAY_ST_TENANT="schemathesis"
  api POST /v1/tenants "$ADMIN" '{"slug":"schemathesis","name":"Schemathesis"}' >/dev/null
  local scopes='["tenants:read","keys:read","keys:write","audit:read","events:read","events:read_pii","events:write","webhooks:read","webhooks:write","webhooks:read_secret","flags:evaluate"]'
  local tenant_key
  tenant_key=$(api POST /v1/tenants/schemathesis/keys "$ADMIN" "{\"name\":\"schemathesis\",\"scopes\":$scopes}" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

  local status=0 who token
  # The tenant key first: the admin run may suspend or delete the tenant.
  for who in tenant-key admin; do
    token=$tenant_key
    [ "$who" = admin ] && token=$ADMIN
    echo "== schemathesis: $engine, $who"
    fixtures
    "$SCHEMATHESIS" --config-file .ci/schemathesis.toml run "$BASE/openapi.json" \
      --header "Authorization: Bearer $token" \
      --max-examples "$EXAMPLES" --seed "$SEED" --workers 2 --request-timeout 10 \
      --report junit --report-junit-path "$WORK/junit-$engine-$who.xml" || status=1
  done
  if [ "$status" -ne 0 ]; then
    echo "-- server log ($engine, last lines)"; tail -n 40 "$dir/server.log"
  fi
  cleanup
  return "$status"
}

result=0
for engine in "${ENGINES[@]}"; do
  run_engine "$engine" || result=1
done
exit "$result"
