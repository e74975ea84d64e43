# Deepfake-detection serving system. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PROFILE ?= full
VENV ?= .venv
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

.PHONY: help setup export triton test lint clean

help:
	@echo "make setup    create $(VENV) (export, local Triton, tests) and $(KERAS_VENV) (Keras reference)"
	@echo "make export   export the $(PROFILE) profile's models into model_repository/ (PROFILE=full|lite)"
	@echo "make triton   serve them with a local Triton on $(TRITON_HOST):$(TRITON_GRPC_PORT) (gRPC)"
	@echo "make test     export both profiles, then run the tests against a real Triton"
	@echo "make lint     ruff"

setup: $(VENV)/.installed $(KERAS_VENV)/.installed

$(VENV)/.installed: export/requirements.txt model_repository/requirements.txt tests/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r export/requirements.txt -r model_repository/requirements.txt -r tests/requirements.txt
	touch $@

# TensorFlow/Keras only to compute the original MesoNet outputs the port is
# checked against; its own environment because it needs numpy 2.
$(KERAS_VENV)/.installed: tests/keras_reference/requirements.txt
	test -x $(KERAS_VENV)/bin/python || $(PYTHON) -m venv $(KERAS_VENV)
	$(KERAS_VENV)/bin/python -m pip install -q -r tests/keras_reference/requirements.txt
	touch $@

export: $(VENV)/.installed
	$(PY) -m export --profile $(PROFILE) $(EXPORT_FLAGS)

triton: export
	$(PY) -m model_repository.local_triton --profile $(PROFILE) --host $(TRITON_HOST) \
		--http-port $(TRITON_HTTP_PORT) --grpc-port $(TRITON_GRPC_PORT) \
		--metrics-port $(TRITON_METRICS_PORT)

test: setup
	$(PY) -m export --profile lite $(EXPORT_FLAGS)
	$(PY) -m export --profile full $(EXPORT_FLAGS)
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf .build
	rm -f model_repository/*/*/1/model.onnx
