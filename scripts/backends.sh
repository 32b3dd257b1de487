# Sourced, not run: makes sure PostgreSQL and Redis are installed (Debian packages) and
# running on this machine, with what the tests start of their own (openssl for the TLS
# tests' certificates, chromium for the flow view's browser tests), and exports
# DATABASE_URL and REDIS_URL for them. Installs only what is missing; starts only what
# is not running. Used by scripts/test.sh and .ci/run.
#   BACKENDS_EXTRA="curl jq" source scripts/backends.sh  # and these commands (= packages)

backends_as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

backends_missing=()
command -v redis-server >/dev/null 2>&1 || backends_missing+=(redis-server)
command -v pg_ctlcluster >/dev/null 2>&1 || backends_missing+=(postgresql)
command -v psql >/dev/null 2>&1 || backends_missing+=(postgresql-client)
command -v openssl >/dev/null 2>&1 || backends_missing+=(openssl)
command -v chromium >/dev/null 2>&1 || backends_missing+=(chromium)
for backends_extra in ${BACKENDS_EXTRA:-}; do
  command -v "$backends_extra" >/dev/null 2>&1 || backends_missing+=("$backends_extra")
done
if [ ${#backends_missing[@]} -gt 0 ]; then
  echo "installing ${backends_missing[*]}"
  backends_as_root apt-get update -qq
  backends_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${backends_missing[@]}" >/dev/null
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting redis"
  backends_as_root mkdir -p /var/lib/redis /var/log/redis
  backends_as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/local.log
fi

backends_pg=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$backends_pg" ]; then
  backends_pg=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  backends_as_root pg_createcluster "$backends_pg" main
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "starting postgresql $backends_pg"
  backends_as_root pg_ctlcluster --skip-systemctl-redirect "$backends_pg" main start
fi
for _ in $(seq 1 60); do
  pg_isready -h 127.0.0.1 -p 5432 -q && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break
  sleep 0.5
done
pg_isready -h 127.0.0.1 -p 5432
redis-cli -h 127.0.0.1 ping
# Works whether the cluster trusts local TCP connections or asks for a password.
backends_as_root runuser -u postgres -- psql -q -c "ALTER USER postgres PASSWORD 'postgres'"

export DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres
export REDIS_URL=redis://127.0.0.1:6379
