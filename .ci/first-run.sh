#!/usr/bin/env bash
# Proves the README's first command as a new user meets it: a fresh clone in an empty temporary
# folder, the command exactly as README.md writes it (read from README.md, not copied here),
# `/readyz`, a tenant created with the admin token the banner printed, then SIGTERM, exit status 0
# and a drained shutdown.
set -euo pipefail
cd "$(dirname "$0")/.."

# The first command is the first line of the first ```sh block; the comment after it is dropped.
cmd="$(awk '/^```sh$/ {inside=1; next} inside {print; exit}' README.md | sed -E 's/[[:space:]]+#.*$//')"
[[ -n "$cmd" ]] || { echo "first-run: no first command found in README.md" >&2; exit 1; }
echo "first-run: README's first command: $cmd"

work="$(mktemp -d)"
log="$work/serve.log"
pid=""
cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A fresh clone of what is checked out, with uncommitted changes to tracked files included.
snapshot="$(git stash create 2>/dev/null || true)"
git clone -q . "$work/runway"
if [[ -n "$snapshot" ]]; then
  git -C "$work/runway" fetch -q origin "$snapshot"
  git -C "$work/runway" checkout -q --detach FETCH_HEAD
else
  git -C "$work/runway" checkout -q --detach "$(git rev-parse HEAD)"
fi
[[ ! -e "$work/runway/runway-data" ]] || { echo "first-run: the clone already has runway-data" >&2; exit 1; }

# Nothing of this shell's Runway settings may leak into a first run.
while read -r var; do unset "$var"; done < <(env | awk -F= '/^RUNWAY_/ {print $1}')

# The first command binds the API (7400) and metrics (7402) listeners on their defaults.
for port in 7400 7402; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "first-run: something already listens on 127.0.0.1:$port; stop it first" >&2
    exit 1
  fi
done

(cd "$work/runway" && exec bash -c "exec $cmd") >"$log" 2>&1 &
pid=$!

# A cold release build can take a while; the server is up when /readyz answers 200.
deadline=$((SECONDS + 2400))
until curl -fsS -o /dev/null "http://127.0.0.1:7400/readyz" 2>/dev/null; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "first-run: the command exited before the server was ready:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  if ((SECONDS > deadline)); then
    echo "first-run: /readyz did not answer within 40 minutes" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  sleep 1
done

token="$(grep -oE 'rw_admin_[A-Za-z0-9_]+' "$log" | head -n1 || true)"
[[ -n "$token" ]] || { echo "first-run: the banner printed no admin token" >&2; cat "$log" >&2; exit 1; }
[[ -f "$work/runway/runway-data/runway.db" ]] || { echo "first-run: no SQLite store under ./runway-data" >&2; exit 1; }

status="$(curl -sS -o "$work/tenant.json" -w '%{http_code}' http://127.0.0.1:7400/v1/tenants \
  -H "authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"slug":"first-run","name":"First run"}')"
if [[ "$status" != 201 ]]; then
  echo "first-run: creating a tenant answered $status: $(cat "$work/tenant.json")" >&2
  exit 1
fi

kill -TERM "$pid"
set +e
wait "$pid"
code=$?
set -e
if [[ "$code" != 0 ]]; then
  echo "first-run: exit status $code after SIGTERM" >&2
  tail -n 40 "$log" >&2
  exit 1
fi
grep -q '^Stopped: drained' "$log" || { echo "first-run: no drained shutdown reported" >&2; tail -n 40 "$log" >&2; exit 1; }
pid=""
echo "first-run: ok (ready, tenant created, SIGTERM → exit 0, drained)"
