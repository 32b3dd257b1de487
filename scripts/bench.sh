#!/usr/bin/env bash
# The benchmark: both services (release build) on fresh databases of a local Postgres and
# a fresh stream namespace of a local Redis, then `loadgen`, which places the orders,
# waits until all are final, runs pgbench with the same order-create transaction on the
# same Postgres, and prints the figures (also in target/bench/: bench.json, latency.svg).
#
#   scripts/bench.sh                                  # 10000 orders, 16 in flight
#   scripts/bench.sh --orders 5000 --rate 100         # a fixed rate instead
#   scripts/bench.sh --orders 300 --pgbench-seconds 2 # the smoke run CI does
#   scripts/bench.sh --rate 800 --duration 600 --quiet  # a soak: a line a minute
#   PAYMENT_REPLICAS=2 scripts/bench.sh               # two payment-service replicas
#   FLOW_VIEW=0 scripts/bench.sh                     # without the flow view (run-local.sh starts it)
#   REDIS_CLUSTER=1 scripts/bench.sh                  # on a local Redis Cluster (3+3 nodes,
#                                                     # the tests' own, started and stopped here)
#
# Any loadgen flag may be given (see `cargo run -p loadgen -- --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

export PROFILE=${PROFILE:-release}
export POSTGRES_URL=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
export ORDERS_DB=bench_orders PAYMENTS_DB=bench_payments
export STREAM_NAMESPACE=bench-$(date +%s)
export RUST_LOG=${RUST_LOG:-warn}
for db in "$ORDERS_DB" "$PAYMENTS_DB"; do
  psql "$POSTGRES_URL/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
done
cargo build --profile "$PROFILE" --bin loadgen
bin=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")

if [ "${REDIS_CLUSTER:-0}" = 1 ]; then
  cargo build -p testkit --bin redis-cluster # a launcher: the dev build the tests share
  cluster_out=$(mktemp)
  target/debug/redis-cluster >"$cluster_out" &
  cluster=$!
  trap 'kill -TERM $cluster 2>/dev/null; wait $cluster 2>/dev/null' EXIT
  timeout 120 bash -c "until [ -s '$cluster_out' ]; do kill -0 $cluster || exit 1; sleep 0.5; done"
  export REDIS_URL=$(head -n 1 "$cluster_out")
  echo "Redis Cluster: $REDIS_URL"
fi

args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--orders 10000 --concurrency 16)
run() {
  order_pid=$(pgrep -f "^$bin/order-service" | head -n 1)
  payment_pid=$(pgrep -f "^$bin/payment-service" | head -n 1)
  view_pid=$(pgrep -f "^$bin/flow-view" | head -n 1 || true)
  redis_pid=$([ "${REDIS_CLUSTER:-0}" = 1 ] || pgrep -x redis-server | head -n 1 || true)
  "$bin/loadgen" --orders-database-url "$POSTGRES_URL/$ORDERS_DB" \
    --reference-database-url "$POSTGRES_URL/postgres" \
    --watch "order-service=$order_pid" --watch "payment-service=$payment_pid" \
    ${view_pid:+--watch "flow-view=$view_pid"} ${redis_pid:+--watch "redis=$redis_pid"} "$@"
}
export -f run
export bin
status=0
scripts/with-local-services.sh bash -c 'run "$@"' run "${args[@]}" || status=$?
[ "${REDIS_CLUSTER:-0}" = 1 ] ||
  redis-cli --scan --pattern "*$STREAM_NAMESPACE:*" | xargs -r redis-cli del >/dev/null || true
exit $status
