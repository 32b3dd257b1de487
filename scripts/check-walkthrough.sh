#!/usr/bin/env bash
# Runs the README's demo walkthrough exactly as written, against both services started
# by scripts/run-local.sh, and fails if any command fails. Needs a local PostgreSQL and
# Redis (see scripts/run-local.sh), curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

# The walkthrough uses the admin API, which is on only with a token: one for this run.
export ADMIN_TOKEN=${ADMIN_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}

block=$(awk '/^## Demo walkthrough/ {section = 1} section && /^```sh$/ {inside = 1; next}
             inside && /^```$/ {exit} inside' README.md)
[ -n "$block" ] || { echo "no walkthrough block found in README.md" >&2; exit 1; }

scripts/with-local-services.sh timeout 120 bash -euo pipefail -c "echo 'running the README walkthrough'
$block
echo 'walkthrough: every command succeeded'"
