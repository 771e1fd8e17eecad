# The bulkhead binary in a small image. Build: docker build -t bulkhead:dev .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      cmake pkg-config zlib1g-dev libssl-dev libzstd-dev python3 protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin bulkhead

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates libssl3 zlib1g libzstd1 nftables iproute2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/bulkhead /usr/local/bin/bulkhead
ENTRYPOINT ["/usr/local/bin/bulkhead"]
