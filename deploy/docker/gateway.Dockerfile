# syntax=docker/dockerfile:1.7
# The HTTP gateway (python -m gateway), with the YuNet face detector baked in.
# Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t REGISTRY/deepfake/gateway:TAG .
# `make images` builds it with podman from a Debian base of its own where the registry's
# and GitHub's are out of reach: --build-arg BASE_IMAGE=... YUNET_FROM=yunet-context.

# The Python 3.11 base: the registry's slim image, or a stand-in with `python` and `pip`.
# Pinned by digest where one was resolved: python -m deploy.bases pin (deploy/README.md).
ARG BASE_IMAGE=python:3.11-slim
# Where YuNet comes from: yunet-url (downloaded and checked against its sha256) or
# yunet-context (.build/images/yunet/, copied there by deploy/images/build.sh after the
# same check, for builders with no route to GitHub). Only the stage named is built.
ARG YUNET_FROM=yunet-url

# YuNet (MIT licence), from a fixed opencv_zoo commit (not the moving main branch)
# and checked against its sha256; SCRFD is non-commercial and never goes into an image.
FROM scratch AS yunet-url
ADD --checksum=sha256:8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4 \
    --chmod=0444 \
    https://github.com/opencv/opencv_zoo/raw/fef72f8fa7c52eaf116d3df358d24e6e959ada0e/models/face_detection_yunet/face_detection_yunet_2023mar.onnx \
    /opt/assets/face/yunet/face_detection_yunet_2023mar.onnx
# Its MIT licence travels with it, fetched from the same place (not kept in git).
ADD --checksum=sha256:c83b8120c50ccbd4c4f96edf53141bdd566ebb8f8e9227e415326aa1b1aba958 \
    --chmod=0444 \
    https://github.com/opencv/opencv_zoo/raw/fef72f8fa7c52eaf116d3df358d24e6e959ada0e/models/face_detection_yunet/LICENSE \
    /opt/assets/face/yunet/LICENSE

FROM scratch AS yunet-context
COPY .build/images/yunet/ /opt/assets/face/yunet/

FROM ${YUNET_FROM} AS yunet

FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# A numeric, non-root user (the Deployment runs as 10001 too); HOME is /tmp,
# the writable emptyDir under a read-only root filesystem.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin gateway

WORKDIR /app

# The gateway's and preprocess/'s dependencies only, wheels only (no compiler
# here). insightface goes in with --no-deps: its own dependencies are in
# preprocess/requirements.txt with the headless OpenCV instead of opencv-python.
COPY preprocess/requirements.txt preprocess/requirements-nodeps.txt preprocess/
COPY gateway/requirements.txt gateway/
RUN pip install --no-cache-dir --only-binary=:all: \
       -r preprocess/requirements.txt -r gateway/requirements.txt \
    && pip install --no-cache-dir --only-binary=:all: --no-deps \
       -r preprocess/requirements-nodeps.txt \
    && python -c "import c2pa, cv2, insightface, onnxruntime, tritonclient.grpc"

# YuNet and its licence (above).
COPY --from=yunet /opt/assets/face/yunet/ /opt/assets/face/yunet/

# The distribution's metadata only (pyproject.toml: no packages): gateway.VERSION reads it.
COPY pyproject.toml ./
RUN pip install --no-cache-dir --no-deps . && python -c "import importlib.metadata as m; m.version('deepfake-detect')"

# The code: the gateway and preprocess/ (the asset resolver and its manifest included).
COPY preprocess/ preprocess/
COPY gateway/ gateway/

ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_DETECTOR=yunet \
    GATEWAY_TMP_DIR=/tmp \
    DEEPFAKE_ASSETS=/opt/assets \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache

USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "gateway"]
