# mlflow-devstack: `make` alone lists the targets. Settings come from .env; a variable set in the
# shell or on the command line wins (make up TRACKING_PORT=5050).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# .env, read by the rules Compose reads it with, as `?=` lines: the shell and the command line win.
ENV_MK := .build/env.mk
$(ENV_MK): .env tools/env-to-make
	@mkdir -p $(@D)
	@tools/env-to-make .env >$@
include $(ENV_MK)

# Containers run as you, so workspace/ and mlruns/ stay yours; never as root.
HOST_UID := $(shell id -u)
ifeq ($(APP_UID),)
APP_UID := $(if $(filter 0,$(HOST_UID)),1000,$(HOST_UID))
endif
ifeq ($(APP_GID),)
APP_GID := $(if $(filter 0,$(HOST_UID)),1000,$(shell id -g))
endif
# The Compose project: COMPOSE_PROJECT_NAME, else this folder's name, normalised as Compose does.
PROJECT_NAME := $(shell name='$(or $(COMPOSE_PROJECT_NAME),$(notdir $(CURDIR)))'; \
  printf '%s' "$${name,,}" | tr -cd 'a-z0-9_-' | sed 's/^[_-]*//')
# Compose v2 if installed, else v1; decided once, not at every use.
ifndef COMPOSE
COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
endif
# Team mode (make up TEAM=1 ...): compose.team.yaml on top of compose.yaml, for every Compose
# command the Makefile and its tools run.
TEAM ?=
ifneq ($(TEAM),)
export COMPOSE_FILE := compose.yaml:compose.team.yaml
endif
IMAGE_TAG := $(STACK_VERSION)-uid$(APP_UID)-gid$(APP_GID)
IMAGES := $(foreach service,tracking dev serve $(if $(TEAM),proxy postgres storage),$(IMAGE_PREFIX)/$(service):$(IMAGE_TAG))
IMAGES_BUILT := .build/images-$(IMAGE_TAG)$(if $(TEAM),-team)
export COMPOSE BIND_ADDRESS TRACKING_PORT JUPYTER_PORT SSH_PORT SERVE_PORT TRACKING_ALLOWED_HOSTS \
  MODEL_URI SERVE_SERVER SERVE_WORKERS SERVE_MAX_REQUEST_MB SERVE_TIMEOUT SERVE_ALLOWED_HOSTS \
  MLFLOW_DISABLE_TELEMETRY BASE_IMAGE LOCAL_BASE_IMAGE IMAGE_PREFIX STACK_VERSION APP_UID APP_GID \
  EXTRA_CA_CERTS BUILD_NETWORK PROJECT_NAME HOST_ADDRESS GARAGE_IMAGE LOCAL_GARAGE_IMAGE TEAM
ifneq ($(COMPOSE_PROJECT_NAME),)
export COMPOSE_PROJECT_NAME
endif

# The address to reach published ports from this machine.
HOST_ADDRESS := $(if $(filter 0.0.0.0,$(BIND_ADDRESS)),127.0.0.1,$(BIND_ADDRESS))
SSH_OPTIONS := -i .secrets/id_ed25519 -p $(SSH_PORT) -o IdentitiesOnly=yes \
  -o UserKnownHostsFile=.secrets/known_hosts -o StrictHostKeyChecking=yes
# The MLflow UI in its "Model training" view (runs, metrics), not the GenAI one.
UI_URL = $$(tools/ui-url http://$(HOST_ADDRESS):$(TRACKING_PORT))
ALPHA ?= 0.5
L1 ?= 0.5
MODEL ?= $(MODEL_URI)
ALIAS ?= champion
VERSION ?=
IMAGE ?=
URL ?=
PROJECT ?= workspace
NAME ?=
DIR ?=
PROJECT_VERSION ?=
ALPHAS ?=
L1_RATIOS ?=
PROMOTE ?=
# Sweep workers: one per core by default.
PARALLEL ?= $(shell getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)

VENV := .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=

# Runs a command in the dev container. `docker exec` on the container found by Compose's labels:
# much faster than `compose exec`, and some Compose v2 releases report a failed command's exit
# status as 0 there.
define in_dev
	@id=$$(tools/container-of dev); docker exec "$$id" $(1)
endef

.PHONY: help
help: ## Show this help
	@echo "mlflow-devstack: MLflow tracking, JupyterLab/SSH dev container and model serving."
	@echo
	@awk -F':.*## ' '/^##@/ {print "\n" substr($$0, 5)} /^[a-zA-Z0-9_-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' \
	  $(firstword $(MAKEFILE_LIST))

##@ The stack
.PHONY: up
up: own-project ports-free secrets images ## Build if needed, start tracking and dev, wait until healthy, print the URLs (TEAM=1: team mode)
	@if [ "$(HOST_UID)" -eq 0 ]; then \
	  find workspace mlruns \( ! -uid $(APP_UID) -o ! -gid $(APP_GID) \) -exec chown -h $(APP_UID):$(APP_GID) {} +; fi
	$(COMPOSE) up -d --remove-orphans tracking dev
	@tools/wait-healthy 300 tracking dev $(if $(TEAM),tracking-a tracking-b postgres storage)
	@$(MAKE) --no-print-directory urls

.PHONY: down
down: ## Stop and remove the containers (runs, models and artifacts stay in ./mlruns)
	$(COMPOSE) --profile serve down --remove-orphans

.PHONY: build
build: ca-certificates secrets ## Build the images (tracking, dev, serve), on a registry-free base if need be
	base=$$(tools/base-image) && $(if $(TEAM),garage=$$(tools/garage-image "$$base") && export GARAGE_IMAGE=$$garage &&) \
	  BASE_IMAGE=$$base $(COMPOSE) --profile serve build
	@mkdir -p .build && touch $(IMAGES_BUILT)

.PHONY: base-image
base-image: ## Build the base image from Debian packages, for machines with no registry (root)
	images/base/build.sh $(LOCAL_BASE_IMAGE)

.PHONY: garage-image
garage-image: ca-certificates ## Get Garage for team mode: pulled, else built from crates.io (once per machine)
	@base=$$(tools/base-image) && tools/garage-image "$$base"

.PHONY: ps
ps: ## Show the containers and their health
	$(COMPOSE) --profile serve ps

.PHONY: logs
logs: ## Follow the logs (make logs SERVICE=tracking for one service)
	$(COMPOSE) --profile serve logs --follow --tail=100 $(SERVICE)

.PHONY: urls
urls: ## Print the URLs and the ssh command
	@echo
	@echo "  MLflow UI    $(UI_URL)"
	@echo "  JupyterLab   http://$(HOST_ADDRESS):$(JUPYTER_PORT)/lab?token=$$(cat .secrets/jupyter_token)"
	@echo "  SSH          ssh $(SSH_OPTIONS) mlflow@$(HOST_ADDRESS)   (or: make ssh)"
	@echo "  Model server http://$(HOST_ADDRESS):$(SERVE_PORT)/invocations   (after: make serve)"
ifneq ($(TEAM),)
	@echo "  Team login   admin / $$(cat .secrets/mlflow_admin_password)   (more users: make user NAME=alice TEAM=1)"
endif
	@echo

.PHONY: doctor
doctor: ## Check what users trip on (Docker, base image, ports, file owners, CAs, health, host names)
	@tools/doctor

##@ Working in the dev container
.PHONY: ssh
ssh: ## Open a shell in the dev container over SSH
	ssh $(SSH_OPTIONS) mlflow@$(HOST_ADDRESS)

.PHONY: ssh-config
ssh-config: ## Print a ~/.ssh/config block (VS Code Remote-SSH); REMOTE=you@vm: for a laptop, via the VM
	@tools/ssh-config '$(REMOTE)'

.PHONY: tunnel
tunnel: ## Print the ssh command that opens the UI and JupyterLab of a stack on REMOTE=you@vm here
	@tools/ssh-config --tunnel '$(REMOTE)'

.PHONY: lab
lab: ## Print the JupyterLab URL, with its token
	@echo "http://$(HOST_ADDRESS):$(JUPYTER_PORT)/lab?token=$$(cat .secrets/jupyter_token)"

.PHONY: train
train: ## Train and register the model in the dev container: make train ALPHA=0.5 L1=0.5
	$(call in_dev,python train.py --alpha '$(ALPHA)' --l1-ratio '$(L1)')
	@echo "Compare the runs: $(UI_URL)"

.PHONY: serve
serve: ## Serve a model (default: wine-quality's @champion, else its latest): make serve [MODEL=models:/wine-quality/2]
	@tools/container-of tracking >/dev/null
	@tools/check-ports serve:$(SERVE_PORT):SERVE_PORT
	MODEL_URI='$(MODEL)' $(COMPOSE) --profile serve up -d --no-deps --force-recreate serve
	@tools/wait-healthy 300 serve
	@docker logs "$$(tools/container-of serve)" 2>&1 | grep -m1 '^serve: serving' || true
	@echo "Scoring at http://$(HOST_ADDRESS):$(SERVE_PORT)/invocations: try 'make predict'"

.PHONY: project
project: tracking-running $(VENV)/.installed ## Run the MLproject in its own container, as the tutorial does: make project ALPHA=1.0 L1=1.0 [PROJECT=<git URL> PROJECT_VERSION=<branch>]
	@# The project's docker_env names this tag: MLflow builds the run's image on the stack's dev image.
	docker tag $(IMAGE_PREFIX)/dev:$(IMAGE_TAG) mlflow-devstack-project-base
	@# Team mode: the host's mlflow and the run's container log in as the admin (tools/team-login.env).
	$(if $(TEAM),MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$$(cat .secrets/mlflow_admin_password)") \
	MLFLOW_TRACKING_URI=http://$(HOST_ADDRESS):$(TRACKING_PORT) $(VENV)/bin/mlflow run '$(PROJECT)' \
	  $(if $(PROJECT_VERSION),--version '$(PROJECT_VERSION)') --build-image --experiment-name wine-quality \
	  -P alpha='$(ALPHA)' -P l1_ratio='$(L1)' -A network=$(PROJECT_NAME)_default \
	  $(if $(TEAM),-A env-file=$(CURDIR)/tools/team-login.env)

.PHONY: sweep
sweep: ## Grid search in parallel containers: make sweep [ALPHAS=0.01,0.1 L1_RATIOS=0.1,0.9 PARALLEL=2 PROMOTE=yes]
	@tools/sweep '$(ALPHAS)' '$(L1_RATIOS)' '$(PARALLEL)' '$(PROMOTE)' '$(IMAGE_PREFIX)/dev:$(IMAGE_TAG)'

.PHONY: promote
promote: ## Point @champion at the wine-quality version with the lowest rmse: make promote [VERSION=3] [ALIAS=champion]
	$(call in_dev,python promote.py --alias '$(ALIAS)' $(if $(VERSION),--version '$(VERSION)'))

.PHONY: package
package: ## Build a self-contained model server image: make package [MODEL=models:/wine-quality/3] [IMAGE=name:tag]
	@tools/package-model '$(MODEL)' '$(IMAGE)' '$(IMAGE_PREFIX)/serve:$(IMAGE_TAG)'

.PHONY: predict
predict: ## Score the first rows of the data set: make predict [URL=http://127.0.0.1:5001/invocations]
ifeq ($(URL),)
	$(call in_dev,python predict.py)
else
	@# Any server this machine reaches (a packaged image, say): from a throwaway container on the host's network.
	docker run --rm --network host -v "$(CURDIR)/workspace:/home/mlflow/workspace:ro" -w /home/mlflow/workspace \
	  -e SCORING_URL='$(URL)' $(IMAGE_PREFIX)/serve:$(IMAGE_TAG) python predict.py
endif

##@ Team mode (TEAM=1: PostgreSQL, Garage, two tracking replicas, login)
.PHONY: user
user: ## Create a team login with a generated password: make user NAME=alice TEAM=1
	@tools/team-user '$(NAME)'

.PHONY: copy-to-team
copy-to-team: ## Copy the local stack's runs and models (./mlruns) into team mode: make copy-to-team TEAM=1
	@tools/copy-to-team '$(IMAGE_PREFIX)/dev:$(IMAGE_TAG)'

.PHONY: backup
backup: ## Back up the database and the bucket into a new folder: make backup TEAM=1 [DIR=backups/<name>]
	@tools/team-backup backup '$(DIR)'

.PHONY: restore
restore: ## Replace the database and the bucket with a backup's: make restore TEAM=1 DIR=backups/<name> (asks first)
	@CONFIRM='$(CONFIRM)' tools/team-backup restore '$(DIR)'
	@$(MAKE) --no-print-directory up

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
bench: $(VENV)/.installed ## Measure start-up, training, serving, memory and sizes (bench/results/)
	$(PYTHON) bench/bench.py $(BENCH_ARGS)

.PHONY: lock
lock: ca-certificates ## Re-resolve requirements/constraints.txt after changing a pin
	@mkdir -p .build
	base=$$(tools/base-image) && docker run --rm --network $(BUILD_NETWORK) \
	  -v "$(CURDIR)/requirements:/requirements:ro" \
	  -v "$(CURDIR)/images/ca-certificates:/usr/local/share/ca-certificates/extra:ro" "$$base" \
	  sh -c 'update-ca-certificates >/dev/null && python3 -m venv /tmp/lock \
	    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /tmp/lock/bin/pip install -q -r /requirements/test.txt \
	    && /tmp/lock/bin/pip freeze' >.build/freeze.txt
	{ sed -n '1,3p' requirements/constraints.txt; cat .build/freeze.txt; } >.build/constraints.txt
	mv .build/constraints.txt requirements/constraints.txt

.PHONY: clean
clean: ## Remove the stack, its images and EVERY run, model and artifact in ./mlruns (TEAM=1: and team mode's volumes) (asks first)
	@if [ "$(CONFIRM)" != yes ]; then \
	  read -r -p "Delete all runs, models and artifacts in ./mlruns$(if $(TEAM), and team mode's database and bucket)? [y/N] " answer; \
	  [ "$$answer" = y ] || { echo "Nothing deleted."; exit 1; }; fi
	$(COMPOSE) --profile serve down --volumes --remove-orphans --rmi all
	find mlruns -mindepth 1 ! -name .gitkeep -delete
	rm -f .build/images-*

# Internal steps.
.PHONY: own-project ports-free secrets images ca-certificates tracking-running
own-project:
	@tools/check-project

ports-free:
	@tools/check-ports tracking:$(TRACKING_PORT):TRACKING_PORT dev:$(JUPYTER_PORT):JUPYTER_PORT dev:$(SSH_PORT):SSH_PORT

secrets:
	@tools/make-secrets

tracking-running:
	@tools/container-of tracking >/dev/null

# Builds only when an image is missing or a file it is built from changed since the last build.
images: ca-certificates
	@if ! docker image inspect $(IMAGES) >/dev/null 2>&1 || [ ! -e $(IMAGES_BUILT) ] \
	  || [ -n "$$(find images requirements .dockerignore -newer $(IMAGES_BUILT) | head -1)" ]; then \
	  $(MAKE) --no-print-directory build; fi

ca-certificates:
	@tools/sync-ca-certificates

$(VENV)/.installed: requirements/*.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements/test.txt -c requirements/constraints.txt
	@touch $@
