#!/usr/bin/env bash
# Runs both services on this machine against a local Postgres and Redis, without Docker.
# Creates the databases `orders` and `payments` if they are missing, starts
# order-service on :8080, payment-service on :8081 and the flow view on :8090, and stops
# them on Ctrl-C.
#
#   POSTGRES_URL  server to create the databases on  (default postgres://postgres@127.0.0.1:5432)
#   REDIS_URL     Redis                              (default redis://127.0.0.1:6379)
#   PROFILE       cargo profile: release or dev      (default release)
#   ADMIN_TOKEN   admin API token, 16+ characters    (default: none, the admin API is off)
#   ORDERS_DB, PAYMENTS_DB  database names           (default orders, payments)
#   PAYMENT_REPLICAS  payment-service processes      (default 1; more listen on :8082, :8083, ...)
#   KEYS_DIR      the services' event signing keys, made at first start (default target/event-keys)
#   FLOW_VIEW     0 to run without the flow view                          (default 1)
#   RANDOM_PAGE_COST  the databases' planner cost of a random page read     (default 1.1)
set -euo pipefail
cd "$(dirname "$0")/.."

postgres_url=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export ADMIN_TOKEN=${ADMIN_TOKEN:-}
profile=${PROFILE:-release}

orders_db=${ORDERS_DB:-orders}
payments_db=${PAYMENTS_DB:-payments}
for db in "$orders_db" "$payments_db"; do
  exists=$(psql "$postgres_url/postgres" -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'")
  [ "$exists" = 1 ] || psql "$postgres_url/postgres" -qc "CREATE DATABASE $db"
  # Planner costs for a working set in memory (README, Run it): with the default
  # random_page_cost of 4, each consumer batch of a hundred orders hash-joins whole
  # tables, still at 30,000 orders (docs/performance.md, 2026-12-05, later).
  psql "$postgres_url/postgres" -qc "ALTER DATABASE $db SET random_page_cost = ${RANDOM_PAGE_COST:-1.1}"
done

cargo build --profile "$profile" --bin order-service --bin payment-service --bin event-keys --bin flow-view
bin=target/$([ "$profile" = dev ] && echo debug || echo "$profile")

# Demo event keys, made once: each service signs with its own and accepts the other's.
keys=${KEYS_DIR:-target/event-keys}
"$bin/event-keys" "$keys" order-service payment-service
export SIGNATURES=${SIGNATURES:-require}
# Both services run this build, so one signature covers a statement's batch of events.
export SIGNATURE_SCOPE=${SIGNATURE_SCOPE:-batch}
order_keys=(SIGNING_KEY_FILE="$keys/order-service.key" VERIFYING_KEYS_FILE="$keys/payment-service.pub")
payment_keys=(SIGNING_KEY_FILE="$keys/payment-service.key" VERIFYING_KEYS_FILE="$keys/order-service.pub")

pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
trap stop INT TERM EXIT

env "${order_keys[@]}" DATABASE_URL="$postgres_url/$orders_db" HTTP_ADDR=${ORDER_HTTP_ADDR:-127.0.0.1:8080} "$bin/order-service" &
pids+=($!)
env "${payment_keys[@]}" DATABASE_URL="$postgres_url/$payments_db" HTTP_ADDR=${PAYMENT_HTTP_ADDR:-127.0.0.1:8081} "$bin/payment-service" &
pids+=($!)
for replica in $(seq 2 "${PAYMENT_REPLICAS:-1}"); do
  env "${payment_keys[@]}" DATABASE_URL="$postgres_url/$payments_db" HTTP_ADDR=127.0.0.1:$((8080 + replica)) "$bin/payment-service" &
  pids+=($!)
done

# The live view: an observer of the streams and the two APIs (FLOW_VIEW=0: without it).
if [ "${FLOW_VIEW:-1}" != 0 ]; then
  env HTTP_ADDR=${FLOW_VIEW_HTTP_ADDR:-127.0.0.1:8090} ORDER_SERVICE_URL="http://${ORDER_HTTP_ADDR:-127.0.0.1:8080}" \
    PAYMENT_SERVICE_URL="http://${PAYMENT_HTTP_ADDR:-127.0.0.1:8081}" "$bin/flow-view" &
  pids+=($!)
  echo "flow view       -> http://${FLOW_VIEW_HTTP_ADDR:-127.0.0.1:8090}"
fi

echo "order-service   -> http://${ORDER_HTTP_ADDR:-127.0.0.1:8080}"
echo "payment-service -> http://${PAYMENT_HTTP_ADDR:-127.0.0.1:8081}"
echo "Ctrl-C stops them all."
wait -n "${pids[@]}"
