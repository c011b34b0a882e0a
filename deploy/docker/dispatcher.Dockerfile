# syntax=docker/dockerfile:1.7
# kiln-dispatcher: the HTTP API, the outbox relay and the event consumer.
#
#   docker build -f deploy/docker/dispatcher.Dockerfile -t kiln-dispatcher .
#
# Three stages: `planner` reduces the workspace to a dependency recipe
# (cargo-chef), `builder` compiles that recipe first, so the dependency layer
# is rebuilt only when Cargo.toml or Cargo.lock change, then the sources; the
# runtime stage is slim Debian with the stripped binary and a non-root user.
# The migrations are compiled into the binary (`serve` applies them).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --version 0.1.78 --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo chef cook --release --locked -p kiln-dispatcher --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p kiln-dispatcher --bin kiln-dispatcher \
 && strip target/release/kiln-dispatcher

FROM ${RUNTIME_IMAGE}
# ca-certificates: TLS to managed PostgreSQL, brokers and S3; curl: health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin kiln
COPY --from=builder /src/target/release/kiln-dispatcher /usr/local/bin/kiln-dispatcher
USER 10001:10001
ENV KILN_BIND=0.0.0.0:8080 \
    RUST_LOG=info
EXPOSE 8080
# The shell form, so that any failure of curl becomes the exit status 1
# that Docker reads as unhealthy.
# hadolint ignore=DL3025
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["kiln-dispatcher"]
CMD ["serve"]
