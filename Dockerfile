# viewcast: build the release binary, run it on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin viewcast

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/viewcast /usr/local/bin/viewcast
USER nobody
EXPOSE 4000
ENTRYPOINT ["viewcast"]
CMD ["serve", "--config", "/etc/viewcast/schema.yaml"]
