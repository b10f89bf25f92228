# syntax=docker/dockerfile:1
# One image with every Aeropartners binary (`aeropartners <service>`).
# Dependencies are compiled in their own layer (cargo-chef), so a source change rebuilds only
# the workspace crates.

FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /src

# The operations console (services/gateway/console), which the gateway embeds at compile time.
FROM node:20-bookworm-slim AS console
WORKDIR /console
COPY services/gateway/console/package.json services/gateway/console/package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY services/gateway/console/ ./
RUN npm run build

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json -p aeropartners
COPY . .
COPY --from=console /console/dist services/gateway/console/dist
RUN cargo build --release --locked -p aeropartners \
 && cp target/release/aeropartners /aeropartners

# distroless: glibc and CA certificates, no shell, runs as the non-root user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /aeropartners /usr/local/bin/aeropartners
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/aeropartners"]
