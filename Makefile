# mlflow-devstack: `make` alone lists the targets. Each target runs the host CLI, devstack/ (Python's
# standard library, python3 3.9 or newer): `make up` is `python3 -m devstack up`, which works without
# make too. Settings come from .env; a variable set in the shell or on the command line wins
# (make up TRACKING_PORT=5050): make hands command-line variables to the CLI in its environment.
# Nothing here needs more than GNU make 3.81 and a POSIX /bin/sh (a stock Mac's).
SHELL = /bin/sh
.DEFAULT_GOAL := help
PYTHON3 = python3
DEVSTACK = $(PYTHON3) -m devstack

.PHONY: help up down build base-image garage-image spark-image ps logs urls doctor ssh ssh-config tunnel lab train \
  serve project sweep promote package predict batch \
  k8s-up k8s-deploy k8s-sweep k8s-down k8s-image user copy-to-team backup restore test test-e2e test-fast \
  lint bench lock clean

help:
	@$(DEVSTACK) help

##@ The stack
up:
	@$(DEVSTACK) up
down:
	@$(DEVSTACK) down
build:
	@$(DEVSTACK) build
base-image:
	@$(DEVSTACK) base-image
garage-image:
	@$(DEVSTACK) garage-image
spark-image:
	@$(DEVSTACK) spark-image
ps:
	@$(DEVSTACK) ps
logs:
	@$(DEVSTACK) logs
urls:
	@$(DEVSTACK) urls
doctor:
	@$(DEVSTACK) doctor

##@ Working in the dev container
ssh:
	@$(DEVSTACK) ssh
ssh-config:
	@$(DEVSTACK) ssh-config
tunnel:
	@$(DEVSTACK) tunnel
lab:
	@$(DEVSTACK) lab
train:
	@$(DEVSTACK) train
serve:
	@$(DEVSTACK) serve
project:
	@$(DEVSTACK) project
sweep:
	@$(DEVSTACK) sweep
promote:
	@$(DEVSTACK) promote
package:
	@$(DEVSTACK) package
predict:
	@$(DEVSTACK) predict
batch:
	@$(DEVSTACK) batch

##@ Kubernetes
k8s-up:
	@$(DEVSTACK) k8s-up
k8s-deploy:
	@$(DEVSTACK) k8s-deploy
k8s-sweep:
	@$(DEVSTACK) k8s-sweep
k8s-down:
	@$(DEVSTACK) k8s-down
k8s-image:
	@$(DEVSTACK) k8s-image

##@ Team mode
user:
	@$(DEVSTACK) user
copy-to-team:
	@$(DEVSTACK) copy-to-team
backup:
	@$(DEVSTACK) backup
restore:
	@$(DEVSTACK) restore

##@ Development
test:
	@$(DEVSTACK) test
test-e2e:
	@$(DEVSTACK) test-e2e
test-fast:
	@$(DEVSTACK) test-fast
lint:
	@$(DEVSTACK) lint
bench:
	@$(DEVSTACK) bench
lock:
	@$(DEVSTACK) lock
clean:
	@$(DEVSTACK) clean
