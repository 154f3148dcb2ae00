# devbox.ops — developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
HARNESS := $(CURDIR)/tests/harness/harness
DEMO_INVENTORY := examples/inventory/demo.yml
COLLECTION_LINK := .collections/ansible_collections/devbox/ops
SANITY_ROOT := /tmp/devbox-ops-sanity
SANITY_DIR := $(SANITY_ROOT)/ansible_collections/devbox/ops
PM2_VERSION := 7.0.4
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(BIN):$(PATH)

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(BIN)/ansible-playbook: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

.PHONY: venv
venv: $(BIN)/ansible-playbook $(COLLECTION_LINK) ## controller tools in .venv (pinned)

$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../.. $@

.PHONY: system-deps
system-deps: ## machine packages the demo and tests need (root: apt + npm)
	./.ci/system-deps

.PHONY: demo
demo: venv ## one simulated devbox: site.yml, then node-web v1 and v2 by deploy.yml under load, status table
	$(HARNESS) up 1
	$(BIN)/ansible-playbook -i $(DEMO_INVENTORY) playbooks/site.yml
	$(BIN)/python examples/demo_deploy.py -i $(DEMO_INVENTORY)
	$(BIN)/ansible-playbook -i $(DEMO_INVENTORY) playbooks/status.yml
	@echo "The demo devbox keeps running (state in /var/tmp/devbox-ops-harness; ssh: see examples/inventory/demo.yml)."
	@echo "Stop it and everything it runs: make demo-down"

.PHONY: demo-down
demo-down: ## stop the simulated devboxes
	$(HARNESS) down

.PHONY: test
test: static unit integration molecule ## everything CI runs

# lint, sanity and docs are each single-threaded: side by side they keep both cores busy (a minute less
# in CI). --output-sync prints each one's output whole, once it ends.
.PHONY: static
static: venv ## lint, sanity and docs side by side
	$(MAKE) --no-print-directory -j3 --output-sync=target lint sanity docs

# Test files run on WORKERS processes (pytest-xdist, one file per worker at a time). Most of a test's
# time is spent waiting (PM2, probes, SSH, sleeps), so on the 2-core machine 3 workers halve the wall
# time (unit: 10:55 serial, 5:05 with 3). Every test file owns its PM2_HOME and its harness hosts and
# state dir, so files never share anything. WORKERS=0 runs everything in this process.
WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile --durations=15

.PHONY: unit
unit: venv ## engine and module tests (real PM2, real HTTP)
	$(PYTEST) tests/unit

.PHONY: integration
integration: venv ## playbooks over SSH against simulated devboxes
	$(PYTEST) tests/integration

.PHONY: molecule
molecule: venv ## molecule default scenario (create/converge/idempotence/verify/destroy)
	$(BIN)/molecule test -s default

.PHONY: lint
lint: venv ## ansible-lint, production profile
	$(BIN)/ansible-lint

.PHONY: docs
docs: venv ## every plugin renders in ansible-doc; the collection builds
	@set -e; for m in plugins/modules/*.py; do n=$$(basename $$m .py); \
	  $(BIN)/ansible-doc devbox.ops.$$n > /dev/null && echo "ansible-doc devbox.ops.$$n: ok"; done
	@set -e; for t in inventory callback; do for m in plugins/$$t/*.py; do n=$$(basename $$m .py); \
	  $(BIN)/ansible-doc -t $$t devbox.ops.$$n > /dev/null && echo "ansible-doc -t $$t devbox.ops.$$n: ok"; \
	  done; done
	@set -e; for n in pm2_table apps_resolved; do \
	  $(BIN)/ansible-doc -t filter devbox.ops.$$n > /dev/null && echo "ansible-doc -t filter devbox.ops.$$n: ok"; done
	@set -e; for r in roles/*/; do n=$$(basename $$r); \
	  $(BIN)/ansible-doc -t role devbox.ops.$$n > /dev/null && echo "ansible-doc -t role devbox.ops.$$n: ok"; done
	$(BIN)/ansible-galaxy collection build --force --output-path /tmp/devbox-ops-build .

.PHONY: sanity
sanity: venv ## ansible-test sanity on a clean copy of the tracked files
	rm -rf $(SANITY_ROOT) && mkdir -p $(SANITY_DIR)
	git ls-files -co --exclude-standard | grep -v '^\.collections' | rsync -a --files-from=- . $(SANITY_DIR)/
	./.ci/ansible-test-get-pip > /dev/null
	cd $(SANITY_DIR) && git init -q && git add -A && \
	  $(BIN)/ansible-test sanity --python 3.11 --color no --requirements $(SANITY_ARGS)

.PHONY: changelog
changelog: venv ## lint the changelog fragments
	$(BIN)/antsibull-changelog lint

.PHONY: clean
clean: ## remove build output (not the venv)
	rm -rf /tmp/devbox-ops-build $(SANITY_ROOT) tests/output
