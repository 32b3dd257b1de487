# Builds both services in one builder stage, with one runtime image per service:
#   docker build --target order-service   -t order-service .
#   docker build --target payment-service -t payment-service .
#   docker build --target flow-view       -t flow-view .
#   docker build --target shipping-service -t shipping-service .   (the example third service)
# (docker-compose.yml builds both this way.) The second build reuses the first's stages.
#
# Stages: `planner` records the dependency graph (cargo-chef recipe), `builder` compiles
# the dependencies in a layer cached until Cargo.toml/Cargo.lock change, then both
# services; each runtime is a slim Debian with its one binary, run as a non-root user.
# Works with the classic builder and with BuildKit.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json \
    --package order-service --package payment-service --package flow-view --package shipping-service
COPY . .
# The same package selection as the cook: features are resolved over the packages
# selected, so `--bin` alone (which selects every workspace member) would rebuild the
# dependencies the test crates give other features.
RUN cargo build --release --locked --package order-service --package payment-service \
        --package service-runtime --package flow-view --package shipping-service \
        --bin order-service --bin payment-service --bin shipping-service \
        --bin event-keys --bin redis-functions --bin flow-view \
    && cp target/release/order-service target/release/payment-service \
        target/release/shipping-service target/release/event-keys \
        target/release/redis-functions target/release/flow-view /usr/local/bin/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# curl only for the health check; no compiler, no cargo.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app \
    && mkdir /keys && chown app /keys
# The event keys (a volume or a secret mounted here; `event-keys` makes demo ones).
COPY --from=builder /usr/local/bin/event-keys /usr/local/bin/event-keys
# The Redis Functions loader (compose's `redis-functions`).
COPY --from=builder /usr/local/bin/redis-functions /usr/local/bin/redis-functions
USER app
ENV LOG_FORMAT=json

FROM runtime AS flow-view
COPY --from=builder /usr/local/bin/flow-view /usr/local/bin/flow-view
ENTRYPOINT ["/usr/local/bin/flow-view"]

FROM runtime AS shipping-service
COPY --from=builder /usr/local/bin/shipping-service /usr/local/bin/shipping-service
ENTRYPOINT ["/usr/local/bin/shipping-service"]

FROM runtime AS payment-service
COPY --from=builder /usr/local/bin/payment-service /usr/local/bin/payment-service
ENTRYPOINT ["/usr/local/bin/payment-service"]

# The last stage is what a build without --target gives.
FROM runtime AS order-service
COPY --from=builder /usr/local/bin/order-service /usr/local/bin/order-service
ENTRYPOINT ["/usr/local/bin/order-service"]
