#!/bin/sh
# Runs redis-server as the redis user with protected mode off (the official image builds
# it so), owning /data (a fresh volume belongs to root); any other command as given.
set -eu
case "${1:-}" in -* | *.conf) set -- redis-server "$@" ;; esac # for the server, as officially
if [ "${1:-}" = redis-server ]; then
    shift
    chown redis:redis /data
    exec runuser -u redis -- redis-server --protected-mode no "$@"
fi
exec "$@"
