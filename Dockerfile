# Redis with the rate-limiting module loaded.
#   docker build -t redis-ratelimit .
#   docker run --rm -p 6379:6379 redis-ratelimit
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
