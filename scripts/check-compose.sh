#!/usr/bin/env bash
# Runs the README's demo for real with Docker, and fails if anything it promises is not so:
# 1. `docker compose up --build` (Debian's `docker-compose` where the v2 plugin is absent),
#    waiting until every container is healthy;
# 2. the README walkthrough, as written, against the containers (scripts/check-walkthrough.sh
#    --compose, redis-cli being the README's alias into the Redis container);
# 3. `--scale payment-replica=2`: three payment-service consumers in one group, each doing
#    some of the work; one of them `docker stop`ped mid-flow loses nothing: every order ends
#    final, with one standing payment exactly for each PAID one;
# 4. `--profile shipping`: a third service joins late, as a group of its own, and ships
#    every PAID order from what the streams still hold;
# 5. `down -v`.
# Needs a Docker engine and the images Compose names (scripts/docker-standins.sh makes
# local stand-ins where no registry is reachable), curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

compose() {
  if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi
}
say() { printf '\n== compose: %s\n' "$*"; }
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-order-payment-demo}
export ADMIN_TOKEN=${ADMIN_TOKEN:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}

finish() {
  status=$?
  if [ $status -ne 0 ]; then
    compose ps >&2 || true
    compose logs --tail 30 >&2 || true
  fi
  compose --profile shipping down -v --remove-orphans >/dev/null 2>&1 || true
  exit $status
}
trap finish EXIT
compose --profile shipping down -v --remove-orphans >/dev/null 2>&1 || true

# Retries a command until it succeeds, for up to <seconds>.
within() { # <seconds> <what> <command...>
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $what" >&2; return 1; }
    sleep 1
  done
}
containers() { # [<service>]: the project's running containers
  docker ps -q --filter label=com.docker.compose.project="$COMPOSE_PROJECT_NAME" \
    ${1:+--filter label=com.docker.compose.service=$1}
}
all_healthy() { # <containers expected>
  local ids
  ids=$(containers)
  [ "$(echo "$ids" | grep -c .)" -eq "$1" ] &&
    ! docker inspect -f '{{.State.Health.Status}}' $ids | grep -qv '^healthy$'
}
orders_sql() { compose exec -T orders-db psql -U orders -d orders -Atc "$1"; }
payments_sql() { compose exec -T payments-db psql -U payments -d payments -Atc "$1"; }
shipping_sql() { compose exec -T shipping-db psql -U shipping -d shipping -Atc "$1"; }
redis() {
  compose exec -T redis redis-cli --user operator --pass operator-redis-demo --no-auth-warning "$@"
}
consumed_by() { # <container>: events its consumer applied (its own /metrics)
  docker exec "$1" curl -fsS localhost:8081/metrics |
    awk '/^events_consumed_total/ {sum += $NF} END {print sum + 0}'
}
each_payment_consumer_has_worked() {
  local id
  for id in $(containers payment-service) $(containers payment-replica); do
    [ "$(consumed_by "$id")" -gt 0 ] || return 1
  done
}
orders_at_least() { [ "$(orders_sql 'SELECT count(*) FROM orders')" -ge "$1" ]; }
none_pending() { [ "$(orders_sql "SELECT count(*) FROM orders WHERE status = 'PENDING'")" = 0 ]; }
place() { # <count>: orders of 1 EUR, 8 at a time
  seq "$1" | xargs -P 8 -I{} curl -fsS -o /dev/null -X POST localhost:8080/orders \
    -H 'content-type: application/json' \
    -d '{"customer_id":"replica-check","currency":"EUR","items":[{"sku":"pen","quantity":1,"unit_price_cents":1}]}'
}

say "up --build"
time compose up --build -d
# redis, two databases, the two services, the functions loader and the flow view.
within 300 "every container healthy" all_healthy 7

say "the README walkthrough"
scripts/check-walkthrough.sh --compose

say "the flow view shows the walkthrough's orders"
shows_paid() { curl -fsS localhost:8090/ | grep -q '<b class="state">PAID</b>'; }
within 30 "a PAID order on http://localhost:8090" shows_paid

say "three payment-service consumers share the work; one stopped mid-flow loses nothing"
compose up -d --scale payment-replica=2
within 120 "every container healthy" all_healthy 9
loading=$(mktemp)
(while [ -e "$loading" ]; do place 20; done) &
load=$!
within 60 "each of the three consumers to apply events" each_payment_consumer_has_worked
consumers=$(redis XINFO CONSUMERS order-events payment-service | grep -cx name || true)
echo "consumers in group payment-service on order-events: $consumers"
[ "$consumers" -eq 3 ] || { echo "expected 3 consumers" >&2; exit 1; }
before=$(orders_sql 'SELECT count(*) FROM orders')
echo "stopping a replica with $before orders placed: $(docker stop "$(containers payment-replica | head -n 1)")"
within 60 "100 more orders" orders_at_least $((before + 100))
rm -f "$loading"
wait $load

say "nothing lost"
within 120 "every order final" none_pending
orders=$(orders_sql 'SELECT count(*) FROM orders')
paid=$(orders_sql "SELECT count(*) FROM orders WHERE status = 'PAID'")
charged=$(payments_sql "SELECT count(*) FROM payments WHERE status = 'COMPLETED'")
echo "orders: $orders, PAID: $paid, standing payments: $charged"
[ "$paid" = "$charged" ] || { echo "PAID orders and standing payments differ" >&2; exit 1; }

say "a third service joins late: shipping-service ships each PAID order once"
time compose --profile shipping up -d --build shipping-service
preparing() { shipping_sql "SELECT count(*) FROM shipments WHERE status = 'PREPARING'" 2>/dev/null; }
shipped_each_paid() { [ "$(preparing)" = "$paid" ]; }
within 180 "a shipment for each of the $paid PAID orders" shipped_each_paid
echo "shipments being prepared: $(preparing), PAID orders: $paid"
say "down -v"
