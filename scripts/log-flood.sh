#!/usr/bin/env bash
# How many warnings a sustained broker fault writes (SPEC §4.9): both services (dev build)
# on a private Redis Cluster (the tests' own, 3+3 nodes) and fresh databases of a local
# Postgres; an order a second; the master of `order-events`' slot killed and left down;
# then the WARN and ERROR lines of each service counted, by cause.
#
#   scripts/log-flood.sh          # the master down for 120 s
#   scripts/log-flood.sh 30       # for 30 s
set -euo pipefail
cd "$(dirname "$0")/.."

down_seconds=${1:-120}
postgres=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
out=$(mktemp -d)
cargo build --bin order-service --bin payment-service
cargo build -p testkit --bin redis-cluster
for db in flood_orders flood_payments; do
  psql "$postgres/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  psql "$postgres/postgres" -qc "CREATE DATABASE $db"
done

pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$out"' EXIT
target/debug/redis-cluster >"$out/cluster" &
pids+=($!)
timeout 120 bash -c "until [ -s '$out/cluster' ]; do sleep 0.5; done"
url=$(head -n 1 "$out/cluster")
for service in order payment; do
  port=$([ $service = order ] && echo 18180 || echo 18181)
  REDIS_URL=$url DATABASE_URL=$postgres/flood_${service}s HTTP_ADDR=127.0.0.1:$port \
    LOG_FORMAT=json RUST_LOG=warn target/debug/$service-service >"$out/$service.log" 2>&1 &
  pids+=($!)
done
timeout 60 bash -c 'until curl -sf localhost:18180/health/ready >/dev/null &&
  curl -sf localhost:18181/health/ready >/dev/null; do sleep 0.5; done'

place() {
  curl -s -o /dev/null -XPOST localhost:18180/orders -H 'content-type: application/json' \
    -d '{"customer_id":"flood","items":[{"sku":"a","quantity":1,"unit_price_cents":100}],"currency":"EUR"}'
}
place
seed=${url#*://}
seed=${seed%%,*}
slot=$(redis-cli -h "${seed%:*}" -p "${seed#*:}" cluster keyslot '{order-events}')
master=$(redis-cli -h "${seed%:*}" -p "${seed#*:}" cluster nodes | awk -v s="$slot" '
  $3 ~ /master/ { for (i = 9; i <= NF; i++) { split($i, r, "-"); if (s >= r[1] && s <= (r[2] == "" ? r[1] : r[2])) { split($2, a, "[:@]"); print a[2] } } }')
echo "killing the master of slot $slot (port $master) for $down_seconds s"
pkill -KILL -f "redis-server .*:$master( |$)"
for _ in $(seq "$down_seconds"); do
  place
  sleep 1
done

for service in order payment; do
  python3 - "$out/$service.log" "$service-service" <<'EOF'
import collections, json, sys
causes = collections.Counter()
for line in open(sys.argv[1]):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if entry.get("level") in ("WARN", "ERROR"):
        causes[(entry.get("target"), entry.get("message", "")[:60])] += 1
print(f"{sys.argv[2]}: {sum(causes.values())} WARN/ERROR lines")
for (target, message), n in causes.most_common():
    print(f"  {n:5}  {target}: {message}")
EOF
done
