#!/usr/bin/env bash
# Runs the README's demo walkthrough exactly as written, against both services started
# by scripts/run-local.sh (dev profile by default), and fails if any command fails.
# Needs a local PostgreSQL and Redis (see scripts/run-local.sh), curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

block=$(awk '/^## Demo walkthrough/ {section = 1} section && /^```sh$/ {inside = 1; next}
             inside && /^```$/ {exit} inside' README.md)
[ -n "$block" ] || { echo "no walkthrough block found in README.md" >&2; exit 1; }

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

echo "running the README walkthrough"
timeout 120 bash -euo pipefail -c "$block"
echo "walkthrough: every command succeeded"
