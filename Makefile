# mlflow-devstack: `make` alone lists the targets. Settings come from .env; a variable set in the
# shell or on the command line wins (make up TRACKING_PORT=5050).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# .env, read with `?=` so the shell and the command line override it, as they do for Compose.
ENV_MK := .build/env.mk
$(ENV_MK): .env
	@mkdir -p $(@D)
	@sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=\(.*\)$$/\1 ?= \2/p' .env >$@
include $(ENV_MK)

# Containers run as you, so workspace/ and mlruns/ stay yours; never as root.
HOST_UID := $(shell id -u)
ifeq ($(APP_UID),)
APP_UID := $(if $(filter 0,$(HOST_UID)),1000,$(HOST_UID))
endif
ifeq ($(APP_GID),)
APP_GID := $(if $(filter 0,$(HOST_UID)),1000,$(shell id -g))
endif
MLRUNS_DIR := $(CURDIR)/mlruns
# Compose v2 if installed, else v1; decided once, not at every use.
ifndef COMPOSE
COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
endif
export COMPOSE COMPOSE_PROJECT_NAME BIND_ADDRESS TRACKING_PORT JUPYTER_PORT SSH_PORT SERVE_PORT \
  TRACKING_ALLOWED_HOSTS MODEL_URI BASE_IMAGE IMAGE_PREFIX STACK_VERSION APP_UID APP_GID \
  BUILD_NETWORK MLRUNS_DIR

# The address to reach published ports from this machine.
HOST_ADDRESS := $(if $(filter 0.0.0.0,$(BIND_ADDRESS)),127.0.0.1,$(BIND_ADDRESS))
SSH_OPTIONS := -i .secrets/id_ed25519 -p $(SSH_PORT) -o IdentitiesOnly=yes \
  -o UserKnownHostsFile=.secrets/known_hosts -o StrictHostKeyChecking=yes
ALPHA ?= 0.5
L1 ?= 0.5
MODEL ?= $(MODEL_URI)

VENV := .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

# Fails with a hint unless the service's container is running.
define require_running
	@id=$$($(COMPOSE) ps -q $(1) 2>/dev/null || true); \
	if [ -z "$$id" ] || [ "$$(docker inspect -f '{{.State.Running}}' $$id)" != true ]; then \
	  echo "error: the $(1) container is not running: start the stack with 'make up'" >&2; exit 1; fi
endef

# Runs a command in the dev container. `docker exec` rather than `compose exec`, because some
# Compose v2 releases report a failed command's exit status as 0.
define in_dev
	$(call require_running,dev)
	docker exec $$($(COMPOSE) ps -q dev) $(1)
endef

.PHONY: help
help: ## Show this help
	@echo "mlflow-devstack: MLflow tracking, JupyterLab/SSH dev container and model serving."
	@echo
	@awk -F':.*## ' '/^##@/ {print "\n" substr($$0, 5)} /^[a-z-]+:.*## / {printf "  make %-11s %s\n", $$1, $$2}' \
	  $(firstword $(MAKEFILE_LIST))

##@ The stack
.PHONY: up
up: ports-free secrets build ## Build if needed, start tracking and dev, wait until healthy, print the URLs
	@if [ "$(HOST_UID)" -eq 0 ]; then chown $(APP_UID):$(APP_GID) mlruns workspace; fi
	$(COMPOSE) up -d --remove-orphans tracking dev
	@tools/wait-healthy 300 tracking dev
	@$(MAKE) --no-print-directory urls

.PHONY: down
down: ## Stop and remove the containers (runs, models and artifacts stay in ./mlruns)
	$(COMPOSE) --profile serve down --remove-orphans

.PHONY: build
build: ca-certificates base-image-check ## Build the images (tracking, dev, serve)
	$(COMPOSE) --profile serve build

.PHONY: base-image
base-image: ## Build a base image from Debian packages, for machines with no registry (root)
	images/base/build.sh $(LOCAL_BASE_IMAGE)
	@echo "Now build on it: set BASE_IMAGE=$(LOCAL_BASE_IMAGE) in .env"

.PHONY: ps
ps: ## Show the containers and their health
	$(COMPOSE) --profile serve ps

.PHONY: logs
logs: ## Follow the logs (make logs SERVICE=tracking for one service)
	$(COMPOSE) --profile serve logs --follow --tail=100 $(SERVICE)

.PHONY: urls
urls: ## Print the URLs and the ssh command
	@echo
	@echo "  MLflow UI    http://$(HOST_ADDRESS):$(TRACKING_PORT)"
	@echo "  JupyterLab   http://$(HOST_ADDRESS):$(JUPYTER_PORT)/lab?token=$$(cat .secrets/jupyter_token)"
	@echo "  SSH          ssh $(SSH_OPTIONS) mlflow@$(HOST_ADDRESS)   (or: make ssh)"
	@echo "  Model server http://$(HOST_ADDRESS):$(SERVE_PORT)/invocations   (after: make serve)"
	@echo

##@ Working in the dev container
.PHONY: ssh
ssh: ## Open a shell in the dev container over SSH
	ssh $(SSH_OPTIONS) mlflow@$(HOST_ADDRESS)

.PHONY: ssh-config
ssh-config: ## Print a ~/.ssh/config block (for ssh mlflow-devstack and VS Code Remote-SSH)
	@echo "Host $(COMPOSE_PROJECT_NAME)"
	@echo "  HostName $(HOST_ADDRESS)"
	@echo "  Port $(SSH_PORT)"
	@echo "  User mlflow"
	@echo "  IdentityFile $(CURDIR)/.secrets/id_ed25519"
	@echo "  IdentitiesOnly yes"
	@echo "  UserKnownHostsFile $(CURDIR)/.secrets/known_hosts"

.PHONY: lab
lab: ## Print the JupyterLab URL, with its token
	@echo "http://$(HOST_ADDRESS):$(JUPYTER_PORT)/lab?token=$$(cat .secrets/jupyter_token)"

.PHONY: train
train: ## Train and register the model in the dev container: make train ALPHA=0.5 L1=0.5
	$(call in_dev,python train.py --alpha '$(ALPHA)' --l1-ratio '$(L1)')

.PHONY: serve
serve: ## Serve a model (default: latest wine-quality): make serve [MODEL=models:/wine-quality/2]
	$(call require_running,tracking)
	@tools/check-ports serve:$(SERVE_PORT):SERVE_PORT
	MODEL_URI='$(MODEL)' $(COMPOSE) --profile serve up -d --no-deps --force-recreate serve
	@tools/wait-healthy 300 serve
	@echo "Scoring at http://$(HOST_ADDRESS):$(SERVE_PORT)/invocations: try 'make predict'"

.PHONY: predict
predict: ## Score the first rows of the data set with the served model
	$(call in_dev,python predict.py)

##@ Development
.PHONY: test
test: $(VENV)/.installed ## Run every test: unit, host integration, end-to-end (Docker)
	$(PYTHON) -m pytest tests/unit tests/integration tests/e2e $(PYTEST_ARGS)

.PHONY: test-e2e
test-e2e: $(VENV)/.installed ## Run the end-to-end tests only (make test-e2e COMPOSE=docker-compose)
	$(PYTHON) -m pytest tests/e2e $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: $(VENV)/.installed ## Run the tests that need no Docker: unit and host integration
	$(PYTHON) -m pytest tests/unit tests/integration $(PYTEST_ARGS)

.PHONY: bench
bench: $(VENV)/.installed ## Measure start-up, training, serving latency and memory (bench/results/)
	$(PYTHON) bench/bench.py

.PHONY: lock
lock: ca-certificates base-image-check ## Re-resolve requirements/constraints.txt after changing a pin
	@mkdir -p .build
	docker run --rm --network $(BUILD_NETWORK) -v "$(CURDIR)/requirements:/requirements:ro" \
	  -v "$(CURDIR)/images/ca-certificates:/usr/local/share/ca-certificates/extra:ro" '$(BASE_IMAGE)' \
	  sh -c 'update-ca-certificates >/dev/null && python3 -m venv /tmp/lock \
	    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /tmp/lock/bin/pip install -q -r /requirements/test.txt \
	    && /tmp/lock/bin/pip freeze' >.build/freeze.txt
	{ sed -n '1,3p' requirements/constraints.txt; cat .build/freeze.txt; } >.build/constraints.txt
	mv .build/constraints.txt requirements/constraints.txt

.PHONY: clean
clean: ## Remove the stack, its images and EVERY run, model and artifact in ./mlruns (asks first)
	@if [ "$(CONFIRM)" != yes ]; then \
	  read -r -p "Delete all runs, models and artifacts in ./mlruns? [y/N] " answer; \
	  [ "$$answer" = y ] || { echo "Nothing deleted."; exit 1; }; fi
	$(COMPOSE) --profile serve down --volumes --remove-orphans --rmi all
	find mlruns -mindepth 1 ! -name .gitkeep -delete

# Internal steps.
.PHONY: ports-free secrets ca-certificates base-image-check
ports-free:
	@tools/check-ports tracking:$(TRACKING_PORT):TRACKING_PORT dev:$(JUPYTER_PORT):JUPYTER_PORT dev:$(SSH_PORT):SSH_PORT

secrets:
	@tools/make-secrets

ca-certificates:
	@if [ -d "$(EXTRA_CA_CERTS)" ]; then cp "$(EXTRA_CA_CERTS)"/*.crt images/ca-certificates/; \
	elif [ -n "$(EXTRA_CA_CERTS)" ]; then cp "$(EXTRA_CA_CERTS)" images/ca-certificates/extra.crt; fi

base-image-check:
	@docker image inspect '$(BASE_IMAGE)' >/dev/null 2>&1 || docker pull '$(BASE_IMAGE)' || { \
	  echo "error: cannot pull $(BASE_IMAGE). With no registry, build a base from Debian packages:" >&2; \
	  echo "       sudo make base-image, then set BASE_IMAGE=$(LOCAL_BASE_IMAGE) in .env" >&2; exit 1; }

$(VENV)/.installed: requirements/runtime.txt requirements/dev.txt requirements/test.txt requirements/constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements/test.txt -c requirements/constraints.txt
	@touch $@
