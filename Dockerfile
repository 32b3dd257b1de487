# syntax=docker/dockerfile:1
#
# Builds either service:
#   docker build --build-arg SERVICE=order-service   -t order-service .
#   docker build --build-arg SERVICE=payment-service -t payment-service .
#
# Stages: `planner` records the dependency graph (cargo-chef recipe), `builder` compiles
# the dependencies in a layer cached until Cargo.toml/Cargo.lock change, then the
# service; `runtime` is a slim Debian with the one binary, run as a non-root user.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ARG SERVICE=order-service
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --package ${SERVICE} --bin ${SERVICE}
COPY . .
RUN cargo build --release --locked --package ${SERVICE} --bin ${SERVICE} \
    && cp target/release/${SERVICE} /usr/local/bin/service

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# curl only for the health check; no compiler, no cargo.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=builder /usr/local/bin/service /usr/local/bin/service
USER app
ENV LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/service"]
