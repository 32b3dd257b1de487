#!/usr/bin/env bash
# Prepares a Debian machine that reaches no image registry to run docker-compose.yml and
# the tests' testcontainers mode:
# 1. a Docker engine: installs Debian's docker.io and starts dockerd if none answers;
#    installs Debian's docker-compose if neither `docker compose` nor `docker-compose` is there;
# 2. the base images the project names, as local STAND-INS built from Debian's packages
#    (deploy/standins/: what each stands in for and how it differs), each skipped when an
#    image of that name is already present.
# On a machine that reaches Docker Hub none of this is needed: Compose pulls the real images.
# Prints what it did. Needs root (or sudo) for the installs and dockerd.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'docker-standins: %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
install() {
  say "installing ${*} (Debian packages)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The Docker engine answering on the default socket (Debian's dockerd answers to older API
# versions than a newer client speaks; the client negotiates).
if docker info >/dev/null 2>&1; then
  say "a Docker engine answers: $(docker info --format '{{.ServerVersion}}')"
else
  command -v dockerd >/dev/null 2>&1 || install docker.io
  say "starting dockerd (log: /var/log/dockerd.log)"
  as_root sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
  timeout 60 sh -c 'until docker info >/dev/null 2>&1; do sleep 0.5; done' || {
    tail -n 20 /var/log/dockerd.log >&2
    exit 1
  }
  say "dockerd $(docker info --format '{{.ServerVersion}}') is up"
fi
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  install docker-compose
fi

present() { docker image inspect "$1" >/dev/null 2>&1; }

# debian:bookworm-slim: a minimal Debian root file system, imported.
if present debian:bookworm-slim; then
  say "debian:bookworm-slim is present"
else
  command -v debootstrap >/dev/null 2>&1 || install debootstrap
  rootfs=$(mktemp -d)
  say "building the stand-in debian:bookworm-slim (debootstrap, about a minute)"
  as_root debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  as_root tar -C "$rootfs" -c . |
    docker import --change 'LABEL org.order-payment-streams.stand-in=true' \
      --change 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
  as_root rm -rf "$rootfs"
fi

# The rest are built on it from deploy/standins/<dir>.
standin() { # <image> <dir> [<context>]
  if present "$1"; then
    say "$1 is present"
  else
    say "building the stand-in $1 from deploy/standins/$2"
    if ! out=$(docker build -q -t "$1" -f "deploy/standins/$2/Dockerfile" "${3:-deploy/standins/$2}" 2>&1); then
      echo "$out" >&2
      exit 1
    fi
  fi
}
standin redis:7.2-alpine redis
standin postgres:16-alpine postgres
if ! present rust:1.95-bookworm; then
  toolchain=$(rustc --print sysroot)
  context=$(mktemp -d)
  mkdir "$context/toolchain"
  cp -a "$toolchain/bin" "$toolchain/lib" "$context/toolchain/"
  [ -d "$toolchain/libexec" ] && cp -a "$toolchain/libexec" "$context/toolchain/"
  cp /etc/ssl/certs/ca-certificates.crt "$context/"
  cp deploy/standins/rust/Dockerfile "$context/"
  standin rust:1.95-bookworm rust "$context"
  rm -rf "$context"
else
  say "rust:1.95-bookworm is present"
fi
