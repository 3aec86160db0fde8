# Builds the chatd gateway. Used by docker-compose.yml for the cluster demo.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gateway --bin chatd

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/chatd chatd && mkdir -p /var/lib/chatd /etc/chatd \
 && chown chatd /var/lib/chatd
COPY --from=build /src/target/release/chatd /usr/local/bin/chatd
COPY config/ /etc/chatd/
USER chatd
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/chatd"]
CMD ["serve", "--config", "/etc/chatd/cluster.toml"]
