# Redis with the rate-limiting module loaded (the default target, the last stage), and the
# gateway's image (the target `gateway`).
#   docker build -t redis-ratelimit .
#   docker run --rm -p 6379:6379 redis-ratelimit
#   docker build --target gateway -t ratelimit-gateway .
#   docker run --rm --network host -e GATEWAY_REDIS=redis://127.0.0.1:6379 ratelimit-gateway
# The cache mounts need BuildKit, Docker's default builder since 23.0 (podman/buildah have them too).

# Build stage: Rust with libclang (bindgen generates the Redis module API bindings).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# cargo's registry and target/ are cache mounts: a change to the sources recompiles this crate,
# not its dependencies, and the layer keeps only the module. COPY keeps the files' mtimes and
# cargo judges freshness by mtime, so the touch makes sure a target/ left by a build of other
# sources is never taken as up to date.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    touch src/lib.rs core/src/lib.rs \
 && cargo build --release --locked --lib \
 && install -D -m 0755 target/release/libredis_ratelimit.so /out/libredis_ratelimit.so

# The gateway's build: its release binary alone (it needs no clang: it does not bind to Redis'
# C API). The same cache mounts as above; the touch, for the same reason, on each crate it
# builds from this tree.
FROM rust:1-bookworm AS gateway-build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    touch core/src/lib.rs client/src/lib.rs tower/src/lib.rs gateway/src/lib.rs gateway/src/main.rs \
 && cargo build --release --locked -p ratelimit-gateway --bin ratelimit-gateway \
 && install -D -m 0755 target/release/ratelimit-gateway /out/ratelimit-gateway

# The gateway: a user of its own (not root), listening on every interface of the container
# (GATEWAY_LISTEN, or --listen, changes it); every other flag has its environment variable
# (`ratelimit-gateway --help`). The build image's CA bundle is the system's roots it reads for
# rediss:// without --redis-ca (one file: no package, no openssl, nothing else in the image).
FROM debian:bookworm-slim AS gateway
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=gateway-build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=gateway-build /out/ratelimit-gateway /usr/local/bin/ratelimit-gateway
# Numeric, so that a runtime can see it is not root (Kubernetes runAsNonRoot).
USER 10001:10001
ENV GATEWAY_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["ratelimit-gateway"]

# Runtime: the official Redis image (Debian bookworm, like the build stage). Its entrypoint
# starts redis-server as the user redis (gosu), as for the plain image: no USER here, so that
# it still chowns a /data bind mount first. The module is root's, readable and executable by
# all (Redis 7 refuses to load a module file without an execute bit).
FROM redis:7.0.15-bookworm
COPY --from=build /out/libredis_ratelimit.so /usr/local/lib/redis/modules/libredis_ratelimit.so
# Healthy when the server answers and knows the module's commands (a ping alone would pass
# without the module).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
  CMD redis-cli COMMAND INFO RL.TOKEN | grep -qi '^rl\.token$' || exit 1
EXPOSE 6379
CMD ["redis-server", "--loadmodule", "/usr/local/lib/redis/modules/libredis_ratelimit.so"]
