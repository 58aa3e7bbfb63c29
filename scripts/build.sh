#!/bin/sh
# Build the mtlsproxy release binary: static (CGO_ENABLED=0), -trimpath,
# with the version stamped into main.version. The Dockerfile's build stage
# and .ci/run both run this script, so the binary CI checks is built exactly
# like the one in the image.
#
#   scripts/build.sh [OUTPUT]        default OUTPUT: bin/mtlsproxy
#
# Environment:
#   VERSION        the version to stamp (default: git describe, else "devel")
#   GOOS, GOARCH   cross-compile, as for go build
#   GO             the go command (default: go)
set -eu

cd "$(dirname "$0")/.."

out=${1:-bin/mtlsproxy}
go=${GO:-go}

if [ -z "${VERSION:-}" ]; then
	VERSION=$(git describe --tags --always --dirty 2>/dev/null || true)
fi
VERSION=${VERSION:-devel}

CGO_ENABLED=0 "$go" build \
	-trimpath \
	-ldflags "-s -w -X main.version=${VERSION}" \
	-o "$out" \
	./cmd/mtlsproxy

echo "built $out (version ${VERSION}, static)" >&2
