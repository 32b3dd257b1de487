#!/usr/bin/env bash
# Fuzzes both HTTP APIs from their own OpenAPI documents with schemathesis (from PyPI)
# and fails on any 5xx answer. Starts the services with scripts/run-local.sh.
#   FUZZ_EXAMPLES   examples per operation (default 200; CI runs a short fuzz)
#   FUZZ_SEED       seed, for a reproducible run (default: random)
set -euo pipefail
cd "$(dirname "$0")/.."

pydeps=${SCHEMATHESIS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/order-payment-streams/schemathesis}
if ! PYTHONPATH="$pydeps" python3 -c 'import schemathesis' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$pydeps" schemathesis
fi
export PYTHONPATH="$pydeps"
# A throw-away token of this run, so that the admin operations are fuzzed too.
export ADMIN_TOKEN=${ADMIN_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
examples=${FUZZ_EXAMPLES:-200}
seed=()
[ -n "${FUZZ_SEED:-}" ] && seed=(--seed "$FUZZ_SEED")

fuzz() {
  local status=0
  for port in 8080 8081; do
    echo "== fuzzing http://127.0.0.1:$port ($examples examples per operation)"
    python3 -m schemathesis.cli run "http://127.0.0.1:$port/openapi.json" \
      --checks not_a_server_error --max-examples "$examples" "${seed[@]}" \
      --header "Authorization: Bearer $ADMIN_TOKEN" --request-timeout 10 || status=1
  done
  return $status
}
export -f fuzz
export examples
scripts/with-local-services.sh bash -c "seed=(${seed[*]}); $(declare -f fuzz); fuzz"
