# Redis with the rate-limiting module loaded.
#   docker build -t redis-ratelimit .
#   docker run --rm -p 6379:6379 redis-ratelimit
# Build stage: Rust with libclang (bindgen generates the Redis module API bindings).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --lib

# Runtime: the official Redis image (Debian bookworm, like the build stage).
FROM redis:7.0.15-bookworm
COPY --from=build /src/target/release/libredis_ratelimit.so /usr/local/lib/redis/modules/libredis_ratelimit.so
EXPOSE 6379
CMD ["redis-server", "--loadmodule", "/usr/local/lib/redis/modules/libredis_ratelimit.so"]
