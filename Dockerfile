# Bulkhead in one small image: the bulkhead binary and the console it serves.
# Build: docker build -t bulkhead:dev .
#
# The eBPF programs are compiled against the build host's kernel BTF (/sys/kernel/btf/vmlinux,
# which `docker build` sees), as collector/build.rs does on any machine. The build stage
# installs what dev/setup installs for building (tests/cli.rs checks the two agree).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      pkg-config zlib1g-dev libssl-dev libzstd-dev python3 \
      clang-19 llvm-19 libbpf-dev bpftool protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin bulkhead

# The console's assets, from the committed package-lock.json (as console/build does).
FROM node:22-bookworm-slim AS console
WORKDIR /console
COPY console/package.json console/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY console/ ./
RUN npx vite build --logLevel warn

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates libssl3 zlib1g libzstd1 nftables iproute2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/bulkhead /usr/local/bin/bulkhead
COPY --from=console /console/dist /usr/share/bulkhead/console
ENV BULKHEAD_CONSOLE_DIR=/usr/share/bulkhead/console
ENTRYPOINT ["/usr/local/bin/bulkhead"]
