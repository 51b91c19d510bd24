# Covertype KFP pipeline: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PACKAGE := covertype_training_pipeline.yaml
DSL := pipeline/covertype_training_pipeline.py
PIPELINE_NAME ?= covertype_continuous_training
EXPERIMENT_NAME ?= Covertype_Classifier_Training
RUN_NAME ?= run-$(shell date +%Y%m%d-%H%M%S)
ROWS ?= 100000
HOST ?= 127.0.0.1
PORT ?= 8080
INSTALLER ?= uv

# `make run` parameters (same names as the pipeline's, as in the lab); empty ones are not sent.
REGION ?= us-central1
GCS_STAGING_PATH ?= $(if $(ARTIFACT_STORE),$(ARTIFACT_STORE)/staging,)
SOURCE_TABLE ?= covertype_dataset.covertype
DATASET_ID ?= splits
EVALUATION_METRIC ?= accuracy
EVALUATION_METRIC_THRESHOLD ?= 0.69
MODEL_ID ?= covertype_classifier
VERSION_ID ?= v01
REPLACE_EXISTING_VERSION ?= True
HYPERTUNE_SETTINGS ?=
DATASET_LOCATION ?= US

# Every pipeline parameter from its variable, shell-quoted; empty ones are not sent.
RUN_PARAMETERS = $(foreach pair,project_id=PROJECT_ID gcs_root=GCS_STAGING_PATH region=REGION \
  source_table_name=SOURCE_TABLE dataset_id=DATASET_ID evaluation_metric_name=EVALUATION_METRIC \
  evaluation_metric_threshold=EVALUATION_METRIC_THRESHOLD model_id=MODEL_ID \
  version_id=VERSION_ID replace_existing_version=REPLACE_EXISTING_VERSION \
  hypertune_settings=HYPERTUNE_SETTINGS dataset_location=DATASET_LOCATION, \
  $(foreach var,$(lastword $(subst =, ,$(pair))),$(if $($(var)), \
  '$(firstword $(subst =, ,$(pair)))=$(subst ','\'',$($(var)))')))

require = $(if $(strip $($(1))),,$(error $(1) is not set: $(2)))

.PHONY: help setup compile images upload run run-local serve test lint bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed  ## create .venv and install everything (fast when up to date)

# uv installs the pins (about 20 s with empty caches); INSTALLER=pip forces the slow pip path.
$(VENV)/.installed: requirements.txt requirements-dev.txt setup.py .ci/setup
	@.ci/setup $(PYTHON) $(VENV) $(INSTALLER)
	@touch $@

compile: setup  ## compile the DSL into $(PACKAGE) with dsl-compile
	@$(BIN)/python -m pipeline.settings
	$(BIN)/dsl-compile --py $(DSL) --output $(PACKAGE)

images:  ## build and push the base and trainer images with Cloud Build
	$(call require,PROJECT_ID,set PROJECT_ID to your GCP project)
	@command -v gcloud >/dev/null || { echo "gcloud not found: install the Google Cloud SDK" >&2; exit 2; }
	@set -e; for image in base_image trainer_image; do \
	  context=$$(mktemp -d); cp $$image/Dockerfile $$image/requirements.txt $$context/; cp $$image/*.py $$context/ 2>/dev/null || true; mkdir $$context/pipeline; \
	  cp pipeline/__init__.py pipeline/schema.py pipeline/atomic.py pipeline/errors.py pipeline/ml_client.py $$context/pipeline/; \
	  tag=$${image^^}; tag=$${!tag:-gcr.io/$(PROJECT_ID)/$$image:latest}; \
	  gcloud builds submit --project $(PROJECT_ID) --timeout 15m --tag $$tag $$context; \
	  rm -r $$context; done

upload: compile  ## upload $(PACKAGE) to KFP as $(PIPELINE_NAME)
	$(call require,INVERSE_PROXY_HOSTNAME,set it to your KFP endpoint host (Settings of the KFP instance))
	@! grep -qE 'covertype/[a-z_]+:local' $(PACKAGE) || { echo "error: $(PACKAGE) names local images; set PROJECT_ID (or BASE_IMAGE and TRAINER_IMAGE) and run make upload again" >&2; exit 2; }
	$(BIN)/kfp --endpoint '$(INVERSE_PROXY_HOSTNAME)' pipeline upload \
	  -p '$(subst ','\'',$(PIPELINE_NAME))' $(PACKAGE)

run:  ## submit a run of $(PIPELINE_NAME) with the parameters from the environment
	$(call require,INVERSE_PROXY_HOSTNAME,set it to your KFP endpoint host (Settings of the KFP instance))
	$(call require,PROJECT_ID,set PROJECT_ID to your GCP project)
	$(call require,GCS_STAGING_PATH,set GCS_STAGING_PATH (or ARTIFACT_STORE) to a gs:// folder)
	@$(BIN)/python -m pipeline.parameters $(RUN_PARAMETERS)
	$(BIN)/kfp --endpoint '$(INVERSE_PROXY_HOSTNAME)' run submit \
	  -e '$(subst ','\'',$(EXPERIMENT_NAME))' -r '$(subst ','\'',$(RUN_NAME))' \
	  $(if $(PIPELINE_ID),-p '$(PIPELINE_ID)',-n '$(subst ','\'',$(PIPELINE_NAME))') \
	  $(RUN_PARAMETERS)

run-local: compile  ## run the compiled pipeline end to end on this machine (ROWS=all for all rows)
	$(BIN)/covertype run --local --package $(PACKAGE) --rows $(ROWS) $(PARAMS)

serve: setup  ## serve deployed models (AI Platform Prediction API) and the run browser
	$(BIN)/covertype serve --host $(HOST) --port $(PORT)

test: setup  ## lint and run the test suite
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: setup  ## ruff
	$(BIN)/ruff check .

bench: setup  ## benchmarks: a table, saved under bench/results/ (QUICK=1: day-to-day subset, < 3 min)
	$(BIN)/python -m bench $(if $(QUICK),--quick) $(BENCH_ARGS)

clean:  ## remove the compiled package and the local home (.covertype)
	rm -rf $(PACKAGE) .covertype
