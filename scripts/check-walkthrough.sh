#!/usr/bin/env bash
# Runs the README's demo walkthrough exactly as written and fails if any command fails.
#   scripts/check-walkthrough.sh            # against both services of scripts/run-local.sh
#                                           # (a local PostgreSQL and Redis, curl and jq)
#   scripts/check-walkthrough.sh --compose  # against the compose project already up
#                                           # (scripts/check-compose.sh), with redis-cli
#                                           # the README's alias into the Redis container
set -euo pipefail
cd "$(dirname "$0")/.."

# The walkthrough uses the admin API, which is on only with a token: one for this run
# (with --compose, the one the project was started with).
export ADMIN_TOKEN=${ADMIN_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}

block=$(awk '/^## Demo walkthrough/ {section = 1} section && /^```sh$/ {inside = 1; next}
             inside && /^```$/ {exit} inside' README.md)
[ -n "$block" ] || { echo "no walkthrough block found in README.md" >&2; exit 1; }

if [ "${1:-}" = --compose ]; then
  alias=$(grep -o "alias redis-cli='[^']*'" README.md | head -n 1)
  [ -n "$alias" ] || { echo "no redis-cli alias found in README.md" >&2; exit 1; }
  # Compose v1 (Debian's docker-compose) where the `docker compose` plugin is absent.
  shim='docker() { if [ "$1" = compose ] && ! command docker compose version >/dev/null 2>&1; then
           shift; docker-compose "$@"; else command docker "$@"; fi; }'
  timeout 120 bash -euo pipefail -O expand_aliases -c "$shim
$alias
echo 'running the README walkthrough against the compose project'
$block
echo 'walkthrough: every command succeeded'"
else
  scripts/with-local-services.sh timeout 120 bash -euo pipefail -c "echo 'running the README walkthrough'
$block
echo 'walkthrough: every command succeeded'"
fi
