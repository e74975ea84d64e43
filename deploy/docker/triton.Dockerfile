# syntax=docker/dockerfile:1.7
# Triton Inference Server with the project's exported model repository: the
# members and one profile's ensemble. Export first, then build from the
# repository root:
#   make export PROFILE=full
#   docker build -f deploy/docker/triton.Dockerfile -t REGISTRY/deepfake/triton:TAG .
# (--build-arg PROFILE=lite after `make export PROFILE=lite` for the lite one.)
# NGC 24.10 = Triton 2.51, the version the local server (make triton) runs. The base is
# an argument, pinned by digest where one was resolved (python -m deploy.bases pin).
ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${BASE_IMAGE}

ARG PROFILE=full
# `profile` is a link to the profile built in (below): the Kubernetes
# Deployment names that link, so a lite image serves lite.
ENV MODEL_REPOSITORY=/models \
    MODEL_PROFILE=profile

# The TensorRT engine cache each member's config.pbtxt names
# (/trt-cache/<model>): ONNX Runtime creates only the last path element, so
# the parent must exist and be the server user's (Kubernetes mounts a volume
# here; `docker run` uses this folder).
RUN mkdir /trt-cache && chown 1000:1000 /trt-cache

# Configs (config.pbtxt for the GPU, configs/cpu.pbtxt, configs/cuda.pbtxt)
# and the exported model.onnx files, read-only for the server's user. The local
# server's Python ONNX Runtime backend is not needed: the NGC image has the
# native one.
COPY model_repository/members /models/members
COPY model_repository/${PROFILE} /models/${PROFILE}

# Fail the build, not the pod, when a model the profile's ensemble needs was
# not exported.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /models
RUN sed -n 's/^ *model_name: "\(.*\)"/\1/p' "${PROFILE}/deepfake_ensemble/config.pbtxt" \
    | while read -r model; do \
        file="members/${model}/1/model.onnx"; \
        if [ "${model}" = deepfake_vote ]; then file="${PROFILE}/deepfake_vote/1/model.onnx"; fi; \
        if [ ! -s "${file}" ]; then \
          echo "missing ${file}: run 'make export PROFILE=${PROFILE}' before building" >&2; \
          exit 1; \
        fi; \
        echo "${file}"; \
      done \
    && ln -s "${PROFILE}" profile

# The NGC image's triton-server user.
USER 1000:1000
EXPOSE 8000 8001 8002
# NVIDIA's entrypoint runs this command (for `docker run`); the Kubernetes
# Deployment gives its own arguments.
CMD ["/bin/sh", "-c", "exec tritonserver --model-repository=\"$MODEL_REPOSITORY/members\" --model-repository=\"$MODEL_REPOSITORY/$MODEL_PROFILE\" --model-control-mode=explicit --load-model=deepfake_ensemble --strict-readiness=true --exit-on-error=true"]
