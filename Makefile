# Deepfake-detection serving system. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PROFILE ?= full
VENV ?= .venv
TRITON_VENV ?= .venv-triton
KERAS_VENV ?= .venv-keras
PY := $(VENV)/bin/python
PYTHON ?= python3
# Assets (weights, face detectors) are looked up here before any download;
# ../shared/assets is where this project's machines and CI keep them.
DEEPFAKE_ASSETS ?= $(abspath ../shared/assets)
export DEEPFAKE_ASSETS
# No Xception/B7 deepfake weights are public with a pinned hash: the local
# default exports them with random weights, marked trained=false, not voting.
EXPORT_FLAGS ?= --allow-random
TRITON_HOST ?= 127.0.0.1
TRITON_HTTP_PORT ?= 8000
TRITON_GRPC_PORT ?= 8001
TRITON_METRICS_PORT ?= 8002
# The members' CPU configs: cpu (fp32 on every CPU), or cpu_fast (each member's precision
# chosen for this CPU's units at start: model_repository/cpu_fast.toml; TRITON_CPU_FLAGS,
# space-separated, stands for the CPU's flags).
TRITON_CONFIG ?= cpu
export TRITON_PYTHON_ENV := $(abspath $(TRITON_VENV))
GATEWAY_HOST ?= 127.0.0.1
GATEWAY_PORT ?= 8080

.PHONY: help setup system-packages export triton run eval calibrate train compare bench bench-gpu loadtest k8s images images-test test test-fast lint rooms settings-doc clean

help:
	@echo "make run      set up, export, then serve the gateway on http://$(GATEWAY_HOST):$(GATEWAY_PORT) over a local Triton"
	@echo "make test     export both profiles, then run the tests against a real Triton and gateway"
	@echo "make test-fast the fast tier: pure logic and the API in process over a fake model server"
	@echo "make setup    create $(VENV) (export, gateway, tests), $(TRITON_VENV) (local Triton), $(KERAS_VENV) (Keras reference)"
	@echo "make export   export the $(PROFILE) profile's models into model_repository/ (PROFILE=full|lite)"
	@echo "make triton   serve them with a local Triton only, on $(TRITON_HOST):$(TRITON_GRPC_PORT) (gRPC)"
	@echo "make eval     run every clip of ../shared/media/videos through the running gateway: table + ROC AUC"
	@echo "make calibrate fit the running gateway's video-score calibration on DATA (default ../shared/media/videos): model_repository/calibration.toml"
	@echo "make train    fine-tune MEMBER (meso4) on DATA (a folder with real/ and fake/) or REVIEWS (the review store's URL): a candidate version"
	@echo "make compare  MEMBER's candidate against the serving version on the shared clips (and REVIEWS' held-out files): figures in GET /api/models"
	@echo "make bench    in-process floor vs Triton vs gateway vs the prototype's eager PyTorch on the same clips: table, RATIOS, results/bench/"
	@echo "make bench-gpu  make bench on an NVIDIA GPU (TensorRT FP16, NVDEC): faces/s, videos/min in results/bench-gpu/"
	@echo "make loadtest locust against a local gateway + Triton (or LOADTEST_ARGS=--url ...): results/loadtest/"
	@echo "make k8s      render + validate the Kubernetes overlays offline, lint the Dockerfiles"
	@echo "make images   build the gateway and CPU Triton images with podman (IMAGES_PROFILE=$(IMAGES_PROFILE), root)"
	@echo "make images-test run the stack from those images, locked down, on loopback: results/images.json"
	@echo "make lint     ruff, and the rooms' import contracts (lint-imports)"
	@echo "make rooms    the gateway's rooms and the imports between them (CONTRIBUTING.md)"
	@echo "make settings-doc write gateway/README.md's settings table from gateway/server/settings.py"

setup: $(VENV)/.installed $(TRITON_VENV)/.installed $(KERAS_VENV)/.installed system-packages

# Debian packages the tests use, installed with apt-get when missing (needs root):
# chromium for the browser tests (Playwright's own download does not work offline),
# ffmpeg to make test media (rotations, codecs, pixel formats) and serve RTMP, GStreamer's
# RTSP server (run by Debian's python3 with python3-gi) for the live-stream tests,
# redis-server for the jobs queue's Redis mode (the tests start their own).
SYSTEM_PACKAGES := chromium ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-bad redis-server postgresql
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi

# The development environment: export, gateway, preprocess, deploy checks, tests. insightface
# is installed without its dependencies, which are listed with the headless
# OpenCV in preprocess/requirements.txt (it would pull the GUI opencv-python).
$(VENV)/.installed: export/requirements.txt preprocess/requirements.txt \
		preprocess/requirements-nodeps.txt gateway/requirements.txt deploy/requirements.txt \
		tests/requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r export/requirements.txt -r preprocess/requirements.txt \
		-r gateway/requirements.txt -r deploy/requirements.txt -r tests/requirements.txt
	$(PY) -m pip install -q --no-deps -r preprocess/requirements-nodeps.txt
	# Metadata only (pyproject.toml's version, which gateway.VERSION reads); the code runs
	# from the checkout.
	$(PY) -m pip install -q --no-deps .
	touch $@

# The local Triton's own environment: the python backend stub needs numpy < 2.
$(TRITON_VENV)/.installed: model_repository/requirements.txt
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q -r model_repository/requirements.txt
	touch $@

# TensorFlow/Keras only to compute the original MesoNet outputs the port is
# checked against; its own environment because it needs numpy 2.
$(KERAS_VENV)/.installed: tests/keras_reference/requirements.txt
	test -x $(KERAS_VENV)/bin/python || $(PYTHON) -m venv $(KERAS_VENV)
	$(KERAS_VENV)/bin/python -m pip install -q -r tests/keras_reference/requirements.txt
	touch $@

export: $(VENV)/.installed
	$(PY) -m export --profile $(PROFILE) $(EXPORT_FLAGS)

triton: export $(TRITON_VENV)/.installed
	$(PY) -m model_repository.local_triton --profile $(PROFILE) --host $(TRITON_HOST) \
		--http-port $(TRITON_HTTP_PORT) --grpc-port $(TRITON_GRPC_PORT) \
		--metrics-port $(TRITON_METRICS_PORT) --model-config-name $(TRITON_CONFIG)

# One command, Ctrl-C stops both: the local Triton, then the gateway over it.
run: $(TRITON_VENV)/.installed export
	$(PY) -m gateway.programs.local --profile $(PROFILE) --host $(GATEWAY_HOST) --port $(GATEWAY_PORT) \
		--triton-host $(TRITON_HOST) --triton-http-port $(TRITON_HTTP_PORT) \
		--triton-grpc-port $(TRITON_GRPC_PORT) --triton-metrics-port $(TRITON_METRICS_PORT) \
		--triton-config $(TRITON_CONFIG)

eval: $(VENV)/.installed
	$(PY) -m gateway.programs.evaluate --url http://$(GATEWAY_HOST):$(GATEWAY_PORT)

# Fit the calibration of the video score of the profile the running gateway serves (make run
# PROFILE=...) on DATA (real/ and fake/, as make train takes; default the shared clips), out of
# sample by source: model_repository/calibration.toml and that profile's vote configs.
calibrate: $(VENV)/.installed
	$(PY) -m export.calibrate --url http://$(GATEWAY_HOST):$(GATEWAY_PORT) \
		$(if $(DATA),--data $(DATA)) $(if $(REVIEWS),--reviews $(REVIEWS)) $(CALIBRATE_ARGS)

# Fine-tune a member on your own media; the result is model_repository/members/<MEMBER>/<n>/.
MEMBER ?= meso4
# From the review store instead: REVIEWS=sqlite:///.build/reviews/reviews.db (or postgresql+psycopg://...).
# The new version is the candidate (loaded beside the serving one, shadow-scored, not served):
# it serves once `python -m export.versions serve` promotes it.
train: $(VENV)/.installed
	@test -n "$(DATA)$(REVIEWS)" || (echo "make train DATA=folder-with-real-and-fake | REVIEWS=database-url [MEMBER=meso4]"; exit 2)
	$(PY) -m export.train $(if $(REVIEWS),--reviews $(REVIEWS),--data $(DATA)) --member $(MEMBER) $(TRAIN_ARGS)

# The candidate measured against the serving version (exit status 3: worse on the shared clips).
compare: $(VENV)/.installed
	$(PY) -m export.compare --member $(MEMBER) $(if $(DATA),--data $(DATA)) \
		$(if $(REVIEWS),--reviews $(REVIEWS)) $(COMPARE_ARGS)

# Side by side on the same clips and crops: in-process (cpu_fast's runtimes), Triton over gRPC,
# the gateway end to end (lite and full), and the prototype's eager PyTorch loop. Starts
# and stops its own Triton and gateway; exports both profiles first (a no-op when current).
# BENCH_ARGS="--max-clips 1 --repeats 1 --stages floor,triton" for a quicker run.
BENCH_ARGS ?=
bench: $(TRITON_VENV)/.installed $(VENV)/.installed
	$(PY) -m export --profile lite $(EXPORT_FLAGS)
	$(PY) -m export --profile full $(EXPORT_FLAGS)
	$(PY) -m tests.bench $(BENCH_ARGS)

# make bench on an NVIDIA GPU as production serves (each config.pbtxt: TensorRT FP16; NVDEC
# where PyAV offers it), faces/s and videos/min in results/bench-gpu/gpu.json; refuses with
# the reason where there is no GPU or onnxruntime-gpu (tests/bench/gpu.py).
bench-gpu: $(VENV)/.installed
	$(PY) -m tests.bench.gpu $(BENCH_ARGS)

# Locust, headless, in a steady and an overload phase, with the gateway's and Triton's
# memory sampled; its own local stack unless LOADTEST_ARGS="--url http://127.0.0.1:8080
# --triton-url 127.0.0.1:8001". LOADTEST_ARGS="--profile full --users 2 --run-time 120".
LOADTEST_ARGS ?=
loadtest: $(TRITON_VENV)/.installed $(VENV)/.installed
	$(PY) -m export --profile lite $(EXPORT_FLAGS)
	$(PY) -m export --profile full $(EXPORT_FLAGS)
	$(PY) -m tests.load $(LOADTEST_ARGS)

# Render every deploy/k8s overlay, validate each object against the Kubernetes
# schemas (strict, offline), hadolint the Dockerfiles, test the invariants.
k8s: $(VENV)/.installed
	$(PY) -m deploy.validate --out .build/k8s
	$(PY) -m pytest -q tests/test_deploy.py tests/test_deploy_invariants.py

# The gateway image (the job workers run it too) and the CPU Triton image, built with podman
# from deploy/docker/ (deploy/images/build.sh: an mmdebstrap base and YuNet from
# $(DEEPFAKE_ASSETS) where the registry and GitHub are out of reach). Needs root.
IMAGES_PROFILE ?= lite
IMAGES_TAG ?= dev
images: $(VENV)/.installed
	$(PY) -m export --profile $(IMAGES_PROFILE) $(EXPORT_FLAGS)
	PROFILE=$(IMAGES_PROFILE) TAG=$(IMAGES_TAG) deploy/images/build.sh

# Triton, the gateway and a job worker from those images with the manifests' security
# settings, on loopback: readiness, the golden record, a signed webhook, a live frame,
# /metrics, a report; sizes and cold starts in results/images.json (deploy/README.md).
images-test: images
	$(PY) -m tests.images --profile $(IMAGES_PROFILE) --tag $(IMAGES_TAG)

test: setup
	$(PY) -m export --profile lite $(EXPORT_FLAGS)
	$(PY) -m export --profile full $(EXPORT_FLAGS)
	$(PY) -m pytest

# The fast tier: the tests not marked `stack` (tests/conftest.py marks them): pure logic and
# the API in process over tests/fake_triton.py; no Triton, browser or ffmpeg process.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not stack"

# The rooms: the tree and the imports between them, as CONTRIBUTING.md shows them.
rooms: $(VENV)/.installed
	$(PY) -m tests.rooms

# gateway/README.md's settings table, generated from the Settings fields (one section per
# group); tests/test_gateway_settings.py fails while the README differs.
settings-doc: $(VENV)/.installed
	$(PY) -m gateway.programs.settings_doc --write gateway/README.md

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	# The rooms' import rules (pyproject.toml, [tool.importlinter]; CONTRIBUTING.md, Rooms).
	$(VENV)/bin/lint-imports

clean:
	rm -rf .build
	rm -f model_repository/*/*/1/model.onnx
