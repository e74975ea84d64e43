#!/usr/bin/env bash
# make images: the gateway image (the job workers run it too) and the CPU Triton image,
# built with podman from deploy/docker/*.Dockerfile, on a machine with no Docker engine
# and, possibly, no route to Docker Hub or GitHub:
#   - the base is python:3.11-slim where the registry answers, otherwise a Debian
#     bookworm base made by mmdebstrap (its python3, 3.11, in a venv first on PATH);
#   - YuNet comes from its pinned URL where GitHub answers, otherwise from
#     $DEEPFAKE_ASSETS, checked against the Dockerfile's sha256 and put in the
#     build context (.build/images/yunet/, git-ignored);
#   - pip inside the build reaches PyPI with the host's CA bundle mounted.
# Needs root (apt-get, podman); the exported models of $PROFILE (make export).
set -euo pipefail

PROFILE=${PROFILE:-lite}
TAG=${TAG:-dev}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEEPFAKE_ASSETS=${DEEPFAKE_ASSETS:-$ROOT/../shared/assets}
WORK=$ROOT/.build/images
GATEWAY_IMAGE=${GATEWAY_IMAGE:-localhost/deepfake/gateway:$TAG}
TRITON_IMAGE=${TRITON_IMAGE:-localhost/deepfake/triton-cpu:$TAG-$PROFILE}
# The gateway Dockerfile's own default (python:3.11-slim, or pinned: deploy/bases.py).
REGISTRY_BASE=docker.io/library/$(sed -n 's/^ARG BASE_IMAGE=//p' "$ROOT/deploy/docker/gateway.Dockerfile")
LOCAL_BASE=localhost/deepfake/base:bookworm
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
DEFAULT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p "$WORK"

log() { printf '[images] %s\n' "$*" >&2; }

# podman, with runc (crun fails on hybrid cgroups), the host's network for builds and
# containers, and ulimits the host grants (a drop-in: containers.conf stays as it is).
ensure_podman() {
    local missing=()
    for p in podman buildah mmdebstrap runc; do
        command -v "$p" >/dev/null || missing+=("$p")
    done
    if ((${#missing[@]})); then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            podman buildah mmdebstrap runc
    fi
    mkdir -p /etc/containers/containers.conf.d
    cat >/etc/containers/containers.conf.d/50-deepfake-images.conf <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
netns = "host"

[engine]
runtime = "runc"
CONF
}

# The base image's name on stdout.
ensure_base() {
    if [[ -n ${BASE_IMAGE:-} ]]; then
        echo "$BASE_IMAGE"
    elif timeout 60 podman pull -q "$REGISTRY_BASE" >/dev/null 2>&1; then
        # Built from the digest just pulled, not the tag (which moves): what was built from.
        echo "${REGISTRY_BASE%@*}@$(podman image inspect --format '{{.Digest}}' "$REGISTRY_BASE")"
    else
        if ! podman image exists "$LOCAL_BASE"; then
            log "no $REGISTRY_BASE: a Debian bookworm base with mmdebstrap"
            mmdebstrap --variant=minbase \
                --include=python3,python3-venv,libpython3.11,ca-certificates \
                --customize-hook='chroot "$1" python3 -m venv /opt/python' \
                --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
                bookworm "$WORK/base.tar" >&2
            # The venv first on PATH, as python:3.11-slim has its /usr/local/bin (a link
            # to the venv's python would start the system's, outside the venv).
            podman import --change "ENV PATH=/opt/python/bin:$DEFAULT_PATH" \
                --change 'CMD ["python"]' "$WORK/base.tar" "$LOCAL_BASE" >/dev/null
            rm -f "$WORK/base.tar"
        fi
        echo "$LOCAL_BASE"
    fi
}

# The yunet stage to build: yunet-url where GitHub answers, otherwise yunet-context
# with $DEEPFAKE_ASSETS' copies, checked against the sums the Dockerfile pins.
yunet_stage() {
    local dockerfile=$ROOT/deploy/docker/gateway.Dockerfile
    local url
    url=$(grep -o 'https://[^ ]*face_detection_yunet_2023mar.onnx' "$dockerfile")
    if curl -fsIL --max-time 10 -o /dev/null "$url" 2>/dev/null; then
        echo yunet-url
        return
    fi
    local sums=() dir=$WORK/yunet source=$DEEPFAKE_ASSETS/face/yunet
    mapfile -t sums < <(grep -o 'sha256:[0-9a-f]*' "$dockerfile" | cut -d: -f2)
    rm -rf "$dir" && mkdir -p "$dir"
    install -m 0444 "$source/face_detection_yunet_2023mar.onnx" "$dir/"
    install -m 0444 "$source/LICENSE.opencv_zoo_yunet" "$dir/LICENSE"
    (cd "$dir" && printf '%s  %s\n' "${sums[0]}" face_detection_yunet_2023mar.onnx \
        "${sums[1]}" LICENSE | sha256sum -c --quiet) >&2
    echo yunet-context
}

build() {
    local dockerfile=$1 image=$2
    shift 2
    log "building $image"
    podman build --layers -f "$ROOT/deploy/docker/$dockerfile" -t "$image" \
        -v "$CA_BUNDLE:$CA_BUNDLE:ro" "$@" "$ROOT"
}

ensure_podman
base=$(ensure_base)
log "base: $base"
build gateway.Dockerfile "$GATEWAY_IMAGE" --build-arg "BASE_IMAGE=$base" \
    --build-arg "YUNET_FROM=$(yunet_stage)"
build triton-cpu.Dockerfile "$TRITON_IMAGE" --build-arg "BASE_IMAGE=$base" \
    --build-arg "PROFILE=$PROFILE"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -e "$GATEWAY_IMAGE" -e "$TRITON_IMAGE" -e "$base" >&2 || true
