#!/usr/bin/env bash
# Starts both services with scripts/run-local.sh (dev profile by default), waits until
# both are ready, runs the given command, then stops them. Exits with the command's status.
#   scripts/with-local-services.sh bash -c 'curl -s localhost:8080/health/ready'
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
PROFILE=${PROFILE:-dev} scripts/run-local.sh >"$log" 2>&1 &
runner=$!
stop() { kill -TERM "$runner" 2>/dev/null || true; wait "$runner" 2>/dev/null || true; }
trap stop EXIT

for port in 8080 8081; do
  if ! timeout 300 bash -c "until curl -fsS localhost:$port/health/ready >/dev/null 2>&1; do
                              kill -0 $runner 2>/dev/null || exit 1; sleep 0.5; done"; then
    echo "service on :$port did not become ready; its log:" >&2
    tail -n 50 "$log" >&2
    exit 1
  fi
done
"$@"
