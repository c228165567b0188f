# syntax=docker/dockerfile:1
#
# Warden's container image (docs/deploy.md):
#   build    release binary; ONNX Runtime's C library from the PyPI wheel
#            (scripts/setup.sh --runtime-only).
#   runtime  distroless cc (glibc and libstdc++ for ONNX Runtime, no shell,
#            no package manager), non-root (uid 65532), everything read-only
#            but the state volume; health check by the binary itself.
#
#   docker build -t warden .
#   docker run --read-only --tmpfs /tmp -p 8443:8443 -v warden-data:/var/lib/warden warden
#
# Checked here without an engine: hadolint and more (scripts/check_deploy.py).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# python3 + pip only to download the onnxruntime wheel (nothing Python runs
# at run time); perl for aws-lc-rs's build; make for jemalloc's.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip perl make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN ./scripts/setup.sh --runtime-only \
    && cargo build --release --locked -p warden \
    && mkdir -p /out/lib /out/state \
    && cp target/release/warden /out/warden \
    && cp .runtime/lib/libonnxruntime.so.* /out/lib/

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/warden /usr/local/bin/warden
COPY --from=build /out/lib/ /usr/local/lib/onnxruntime/
COPY models/ /models/
COPY deploy/docker/warden.toml /etc/warden/warden.toml
# The state directory, owned by the runtime user (a new volume inherits it).
COPY --from=build --chown=65532:65532 /out/state /var/lib/warden
USER 65532:65532
# SQLite's temporary files go to the state volume: the root is read-only.
ENV SQLITE_TMPDIR=/var/lib/warden
# Keys, users, the audit trail, the generated certificate: the only writable path.
VOLUME ["/var/lib/warden"]
EXPOSE 8443 8444 9443
HEALTHCHECK --interval=15s --timeout=6s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/warden", "health", "--config", "/etc/warden/warden.toml"]
ENTRYPOINT ["/usr/local/bin/warden"]
CMD ["serve", "--config", "/etc/warden/warden.toml"]
