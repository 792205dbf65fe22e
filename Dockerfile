# tollgate's image, built by deploy/build-image.sh (docker build -t tollgate:<version> .).
# It runs where Kargo ran Express Gateway: the config directory at /var/lib/eg, the gateway on
# 8080, the Admin API on 9876 (the container's loopback unless the config says otherwise).
# Needs BuildKit (Docker 23+ builds with it by default) for the cargo cache mounts.

# ---- build: Rust on Debian 12; cmake for zlib-ng (perl and make, for the vendored OpenSSL,
# come with the image)
FROM rust:1-bookworm AS build
# Debian's packages are not pinned: a point release replaces the versions a pin would name.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -m 0755 target/release/tollgate /usr/local/bin/tollgate

# ---- run: the binary links only glibc (OpenSSL is built in); ca-certificates for https
# upstreams, S3 and Redis over TLS
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --uid 10001 --home-dir /var/lib/tollgate --shell /usr/sbin/nologin tollgate \
 && mkdir -p /var/lib/tollgate/data /var/lib/tollgate/cache /var/lib/eg \
 && chown -R tollgate:tollgate /var/lib/tollgate
COPY --from=build /usr/local/bin/tollgate /usr/local/bin/tollgate
# The shipped config, so the image starts on its own; Kargo mounts its
# configs/express-gateway/ files over it.
COPY conf/ /var/lib/eg/
# EG_CONFIG_DIR: the config directory of every command (serve, check, users, populate, ...).
# The embedded store (db.redis.emulate: true) keeps its files in TOLLGATE_DATA_DIR: mount a
# volume there to keep them; with Redis nothing is written. /var/lib/tollgate/cache is the
# tile cache's disk tier's place (TOLLGATE_CACHE_DIR), writable by the gateway's user.
ENV EG_CONFIG_DIR=/var/lib/eg \
    TOLLGATE_DATA_DIR=/var/lib/tollgate/data
WORKDIR /var/lib/eg
# the user created above (uid 10001)
# hadolint ignore=DL3066
USER tollgate
# (The Admin API, 9876, listens on the container's loopback: not exposed.)
EXPOSE 8080
# `tollgate healthcheck` calls the gateway's /healthcheck and exits 0 or 1: no curl needed.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 CMD ["tollgate", "healthcheck"]
# SIGTERM (docker stop) drains in-flight requests for up to --grace-period seconds (5).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tollgate"]
CMD ["serve"]
