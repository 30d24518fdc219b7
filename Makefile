# Consistent VSS snapshots for Windows fleets: every task an operator or developer needs.
# cargo honours CARGO_TARGET_DIR from the environment; by default one workspace target/.

PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-$(shell cksum < requirements-dev.txt | cut -d' ' -f1)
EVENT  ?= events/snapshot-dry-run.json

.PHONY: help setup build test unit-test e2e-test lint demo release deploy clean

help:
	@echo "make demo    - snapshot a demo Windows fleet end to end on the local emulator"
	@echo "make test    - unit tests and end-to-end tests against the local emulator"
	@echo "make lint    - cargo fmt --check, clippy -D warnings, cfn-lint template.yaml"
	@echo "make release - arm64 Lambda bootstrap with cargo-lambda (needs cargo-lambda)"
	@echo "make deploy  - sam build && sam deploy --guided (needs aws-sam-cli and credentials)"

# The pinned emulator and linter in a project-local virtual environment.
setup: $(STAMP)
$(STAMP): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

build:
	cargo build --workspace --all-targets

unit-test:
	cargo test --workspace --lib --bins

e2e-test: setup
	cargo test -p harness --tests

# --show-output: the chaos test's fault-free/chaos comparison table shows in CI logs too.
test: setup
	cargo test --workspace -- --show-output

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/cfn-lint template.yaml

demo: setup
	cargo run --quiet -p harness --bin demo

release:
	cargo lambda build --release --arm64 -p consistent-snapshot

deploy:
	sam build && sam deploy --guided

clean:
	cargo clean
	rm -rf $(VENV) .emulator .aws-sam
