# Covertype KFP pipeline: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PACKAGE := covertype_training_pipeline.yaml
DSL := pipeline/covertype_training_pipeline.py
# PLATFORM=caip (AI Platform, the lab's form; the default) or vertex (Vertex AI) for compile,
# run-local, upload and run; pipeline/settings.py validates it.
PIPELINE_NAME ?= covertype_continuous_training$(if $(filter vertex,$(PLATFORM)),_vertex,)
EXPERIMENT_NAME ?= Covertype_Classifier_Training
RUN_NAME ?= run-$(shell date +%Y%m%d-%H%M%S)
ROWS ?= 100000
HOST ?= 127.0.0.1
PORT ?= 8080
INSTALLER ?= uv

# An endpoint on this machine (http://127.0.0.1:PORT or http://localhost:PORT) is taken to be
# `covertype serve`, the local KFP API: local images are fine there, and `make run` defaults
# PROJECT_ID to `local` and the staging path to the local storage root. A cluster reached
# through a port-forward on localhost is not: pass LOCAL_ENDPOINT= (empty) to say so.
LOCAL_ENDPOINT ?= $(filter 127.0.0.1 localhost,$(firstword $(subst :, ,$(patsubst http://%,%,$(INVERSE_PROXY_HOSTNAME)))))
LOCAL_STAGING = $(shell $(BIN)/python -c 'from pipeline.local.home import storage_root; print(storage_root() / "staging")')

# `make run` parameters (same names as the pipeline's, as in the lab); empty ones are not sent.
RUN_PROJECT_ID = $(or $(PROJECT_ID),$(if $(LOCAL_ENDPOINT),local))
REGION ?= us-central1
GCS_STAGING_PATH ?= $(if $(ARTIFACT_STORE),$(ARTIFACT_STORE)/staging,$(if $(LOCAL_ENDPOINT),$(LOCAL_STAGING),))
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
RUN_PARAMETERS = $(foreach pair,project_id=RUN_PROJECT_ID gcs_root=GCS_STAGING_PATH region=REGION \
  source_table_name=SOURCE_TABLE dataset_id=DATASET_ID evaluation_metric_name=EVALUATION_METRIC \
  evaluation_metric_threshold=EVALUATION_METRIC_THRESHOLD model_id=MODEL_ID \
  version_id=VERSION_ID replace_existing_version=REPLACE_EXISTING_VERSION \
  hypertune_settings=HYPERTUNE_SETTINGS dataset_location=DATASET_LOCATION, \
  $(foreach var,$(lastword $(subst =, ,$(pair))),$(if $($(var)), \
  '$(firstword $(subst =, ,$(pair)))=$(subst ','\'',$($(var)))')))

IMAGE_VARIABLES = $(if $(filter vertex,$(PLATFORM)),BASE_IMAGE$(comma) TRAINER_IMAGE and SERVING_IMAGE,BASE_IMAGE and TRAINER_IMAGE)
comma := ,
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

images: setup  ## build and push the base, trainer and serving images with Cloud Build
	$(call require,PROJECT_ID,set PROJECT_ID to your GCP project)
	@command -v gcloud >/dev/null || { echo "gcloud not found: install the Google Cloud SDK" >&2; exit 2; }
	@set -e; for image in base_image trainer_image serving_image; do \
	  context=$$(mktemp -d); $(BIN)/python -m pipeline.images stage $$image $$context; \
	  tag=$${image^^}; tag=$${!tag:-gcr.io/$(PROJECT_ID)/$$image:latest}; \
	  gcloud builds submit --project $(PROJECT_ID) --timeout 30m --tag $$tag $$context; \
	  rm -r $$context; done

upload: compile  ## upload $(PACKAGE) to KFP as $(PIPELINE_NAME) (again: as a new version of it)
	$(call require,INVERSE_PROXY_HOSTNAME,set it to your KFP endpoint host (Settings of the KFP instance))
	@$(if $(LOCAL_ENDPOINT),true,! grep -qE 'covertype/[a-z_]+:local' $(PACKAGE)) || { echo "error: $(PACKAGE) names local images; set PROJECT_ID (or $(IMAGE_VARIABLES)) and run make upload again" >&2; exit 2; }
	$(BIN)/python -m pipeline.kfp_upload --endpoint '$(INVERSE_PROXY_HOSTNAME)' \
	  --name '$(subst ','\'',$(PIPELINE_NAME))' \
	  $(if $(PIPELINE_VERSION),--version-name '$(subst ','\'',$(PIPELINE_VERSION))') $(PACKAGE)

run:  ## submit a run of $(PIPELINE_NAME) with the parameters from the environment
	$(call require,INVERSE_PROXY_HOSTNAME,set it to your KFP endpoint host (Settings of the KFP instance))
	$(if $(strip $(RUN_PROJECT_ID)),,$(error PROJECT_ID is not set: set PROJECT_ID to your GCP project))
	$(call require,GCS_STAGING_PATH,set GCS_STAGING_PATH (or ARTIFACT_STORE) to a gs:// folder)
	@$(BIN)/python -m pipeline.parameters $(RUN_PARAMETERS)
	$(BIN)/kfp --endpoint '$(INVERSE_PROXY_HOSTNAME)' run submit \
	  -e '$(subst ','\'',$(EXPERIMENT_NAME))' -r '$(subst ','\'',$(RUN_NAME))' \
	  $(if $(PIPELINE_ID),-p '$(PIPELINE_ID)',-n '$(subst ','\'',$(PIPELINE_NAME))') \
	  $(RUN_PARAMETERS)

run-local: compile  ## run the compiled pipeline end to end on this machine (ROWS=all for all rows)
	$(BIN)/covertype run --local --package $(PACKAGE) --rows $(ROWS) $(PARAMS)

serve: setup  ## serve deployed models, the local KFP API (runs load ROWS rows) and the run browser
	$(BIN)/covertype serve --host $(HOST) --port $(PORT) --rows $(ROWS)

test: setup  ## lint and run the test suite
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: setup  ## ruff
	$(BIN)/ruff check .

bench: setup  ## benchmarks: a table, saved under bench/results/ (QUICK=1: day-to-day subset, < 3 min)
	$(BIN)/python -m bench $(if $(QUICK),--quick) $(BENCH_ARGS)

clean:  ## remove the compiled package and the local home (.covertype)
	rm -rf $(PACKAGE) .covertype
