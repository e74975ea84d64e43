# syntax=docker/dockerfile:1.7
# Triton on CPUs only, for the `cpu` overlay: tritonserver 2.51 from the
# nvidia-pytriton wheel (the server `make run` uses, the same version as NGC
# 24.10) with the project's Python-based ONNX Runtime and OpenVINO backends
# (the wheel has neither), and the exported model repository. The GPU image
# stays on NGC (triton.Dockerfile). Export first, then build from the
# repository root:
#   make export PROFILE=lite
#   docker build -f deploy/docker/triton-cpu.Dockerfile --build-arg PROFILE=lite \
#     -t REGISTRY/deepfake/triton-cpu:TAG .
# The Deployment's arguments (`tritonserver ...`) run as they do on the NGC
# image: the binary is on PATH and its default backend directory,
# /opt/tritonserver/backends, holds the backends the CPU configs name.

# The Python 3.11 base: the registry's slim image, or a stand-in with `python` and `pip`
# (make images: deploy/images/build.sh).
# Pinned by digest where one was resolved: python -m deploy.bases pin (deploy/README.md).
ARG BASE_IMAGE=python:3.11-slim

# The profile's models only: the members its ensemble names, so a lite image carries no
# Xception or B7 weights. The build fails, not the pod, when one was not exported (the
# same check as triton.Dockerfile's).
FROM ${BASE_IMAGE} AS models
ARG PROFILE=full
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY model_repository/members /models/all-members
COPY model_repository/${PROFILE} /models/${PROFILE}
WORKDIR /models
RUN mkdir members \
    && sed -n 's/^ *model_name: "\(.*\)"/\1/p' "${PROFILE}/deepfake_ensemble/config.pbtxt" \
    | while read -r model; do \
        file="${PROFILE}/deepfake_vote/1/model.onnx"; \
        if [ "${model}" != deepfake_vote ]; then \
          cp -r "all-members/${model}" members/; \
          file="members/${model}/1/model.onnx"; \
        fi; \
        if [ ! -s "${file}" ]; then \
          echo "missing ${file}: run 'make export PROFILE=${PROFILE}' before building" >&2; \
          exit 1; \
        fi; \
        echo "${file}"; \
      done \
    && rm -r all-members \
    && ln -s "${PROFILE}" profile

FROM ${BASE_IMAGE}

ARG PROFILE=full
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    MODEL_REPOSITORY=/models \
    MODEL_PROFILE=profile

# The NGC image's triton-server user and group ids, which the Deployment runs as.
RUN groupadd --system --gid 1000 triton-server \
    && useradd --system --uid 1000 --gid 1000 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin triton-server

# The server's own environment (the wheel, ONNX Runtime, OpenVINO, numpy < 2 for the
# python backend stub), as .venv-triton locally.
COPY model_repository/requirements.txt /opt/deepfake/model_repository/requirements.txt
RUN python -m venv /opt/triton \
    && /opt/triton/bin/pip install --no-cache-dir --only-binary=:all: \
       -r /opt/deepfake/model_repository/requirements.txt

# The backend directory, assembled by the same code as the local server's
# (local_triton.prepare_backends): the wheel's python backend and the stub for this
# Python, and onnxruntime/ and openvino/ as Python-based backends. The server binary
# and its libraries are linked where PATH and LD_LIBRARY_PATH find them.
COPY model_repository/__init__.py model_repository/local_triton.py /opt/deepfake/model_repository/
COPY model_repository/backends /opt/deepfake/model_repository/backends
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/deepfake
RUN /opt/triton/bin/python -c "from pathlib import Path; \
from model_repository.local_triton import prepare_backends, wheel_dir, site_packages; \
env = Path('/opt/triton'); prepare_backends(Path('/opt/tritonserver'), env); \
Path('/opt/tritonserver/bin').mkdir(); \
Path('/opt/tritonserver/bin/tritonserver').symlink_to(wheel_dir(env) / 'bin' / 'tritonserver'); \
Path('/opt/tritonserver/lib').symlink_to(site_packages(env) / 'nvidia_pytriton.libs')"

# The backend stub runs model.py with the first `python` on PATH: the server's.
ENV PATH=/opt/triton/bin:/opt/tritonserver/bin:${PATH} \
    LD_LIBRARY_PATH=/opt/tritonserver/lib

# Configs (configs/cpu.pbtxt among them) and the exported model.onnx files.
COPY --from=models /models /models
WORKDIR /models

USER 1000:1000
EXPOSE 8000 8001 8002
# For `docker run`; the Kubernetes Deployment (cpu overlay) gives its own arguments.
# The members share the container's cores (--rate-limit, as make triton does), and the
# stubs' shared memory grows in large steps (batches of 380 px faces are megabytes).
CMD ["/bin/bash", "-c", "exec tritonserver --model-repository=\"$MODEL_REPOSITORY/members\" --model-repository=\"$MODEL_REPOSITORY/$MODEL_PROFILE\" --model-control-mode=explicit --load-model=deepfake_ensemble --model-config-name=cpu --rate-limit=execution_count --rate-limit-resource=cpu:$(nproc) --strict-readiness=true --exit-on-error=true --backend-config=python,shm-default-byte-size=16777216 --backend-config=python,shm-growth-byte-size=16777216"]
