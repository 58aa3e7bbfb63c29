# syntax=docker/dockerfile:1
#
# mtlsproxy container image: a static binary on distroless, running as the
# non-root user 65532. Build:
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t mtlsproxy .
#
# The binary is built by scripts/build.sh, the same script CI runs and checks
# for static linking. See deploy/README.md for Kubernetes, Compose and systemd.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
COPY . .
ARG VERSION=devel
ARG TARGETOS
ARG TARGETARCH
# The module and build caches persist between builds on the same builder.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    VERSION=${VERSION} GOOS=${TARGETOS} GOARCH=${TARGETARCH} ./scripts/build.sh /out/mtlsproxy

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=devel
LABEL org.opencontainers.image.title="mtlsproxy" \
      org.opencontainers.image.description="Local forward proxy that adds mutual TLS: plain HTTP in, HTTPS with a client certificate out" \
      org.opencontainers.image.source="https://github.com/mtlsproxy/mtlsproxy" \
      org.opencontainers.image.documentation="https://github.com/mtlsproxy/mtlsproxy/blob/main/deploy/README.md" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"
COPY --from=build /out/mtlsproxy /mtlsproxy
# 65532 is "nonroot" in the distroless image; numeric, so that Kubernetes
# runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# The forward-proxy listener. The admin listener (9901) stays on loopback
# inside the container and is not published.
EXPOSE 8080
# Needs "admin: 127.0.0.1:9901" in the config: exits 0 when /readyz is 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --start-interval=1s --retries=3 \
    CMD ["/mtlsproxy", "health", "--admin", "127.0.0.1:9901"]
ENTRYPOINT ["/mtlsproxy"]
CMD ["run", "--config", "/etc/mtlsproxy/config.yaml"]
