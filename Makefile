# Consistent VSS snapshots for Windows fleets: every task an operator or developer needs.
# cargo honours CARGO_TARGET_DIR from the environment; by default one workspace target/.

PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-$(shell cksum < requirements-dev.txt | cut -d' ' -f1)
EVENT  ?= events/report.json
# The long-lived local emulator of `make emulator` / `make invoke`, and the function's port.
LOCAL_PORT  ?= 5005
INVOKE_PORT ?= 9001

.PHONY: help setup build test unit-test e2e-test lint demo bench emulator emulator-stop invoke release deploy clean

help:
	@echo "make demo    - snapshot a demo Windows fleet end to end on the local emulator"
	@echo "make test    - unit tests and end-to-end tests against the local emulator"
	@echo "make lint    - cargo fmt --check, clippy -D warnings, cfn-lint, checkov, the template's IAM guarantees, the crate's layout"
	@echo "make bench   - AWS calls against their floor, init time, memory and CPU of the release binary; writes BENCHMARKS.md"
	@echo "make invoke EVENT=events/report.json - the function under cargo-lambda against a local emulator with the demo fleet"
	@echo "make emulator-stop - stop the emulator make invoke left running"
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

# The pure core and the harness's own unit tests: no emulator needed.
unit-test:
	cargo test --workspace --lib

# The one end-to-end test binary (tests/e2e/); `make e2e-test ONLY=chaos` runs one module.
e2e-test: setup
	cargo test --workspace --test e2e -- $(ONLY) --show-output

# --show-output: the chaos test's fault-free/chaos comparison table shows in CI logs too.
test: setup
	cargo test --workspace -- --show-output

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/cfn-lint template.yaml vault.yaml
	$(VENV)/bin/checkov --quiet --compact --skip-download --framework cloudformation -f template.yaml -f vault.yaml
	$(VENV)/bin/python scripts/check_template.py template.yaml vault.yaml
	$(VENV)/bin/python scripts/check_layout.py functions/consistent-snapshot/src

demo: setup
	cargo run --quiet -p harness --bin demo

# The release binary, started as Lambda starts it, against the emulator: a full run of 1,000
# servers with its AWS calls counted, and the same night by the Python peer and under EC2's
# request buckets, a 20,000-server dispatch, a 100,000-snapshot retention
# plan, init time; then criterion's benchmarks of the planner and of message handling, and
# retention's planning over 1,000,000 catalog entries (time and peak RSS, `plan_million`).
# Writes BENCHMARKS.md (the time it took is written in it: about 75 minutes on 2 cores).
bench: setup
	cargo build --release -p consistent-snapshot
	cargo bench -p consistent-snapshot --bench hot_paths
	cargo bench -p consistent-snapshot --bench plan_million
	cargo run --quiet -p harness --bin bench

# A long-lived emulator on 127.0.0.1:$(LOCAL_PORT) seeded with the demo fleet (once).
emulator: setup
	@mkdir -p .emulator
	@if $(VENV)/bin/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$(LOCAL_PORT)/_sim/invocations', timeout=2)" 2>/dev/null; then \
		echo "==> emulator already running on 127.0.0.1:$(LOCAL_PORT)"; \
	else \
		echo "==> starting the emulator on 127.0.0.1:$(LOCAL_PORT) (log: .emulator/server.log)"; \
		MOTO_AMIS_PATH=tests/emulator/amis.json nohup $(VENV)/bin/python tests/emulator/server.py \
			--host 127.0.0.1 --port $(LOCAL_PORT) > .emulator/server.log 2>&1 & echo $$! > .emulator/server.pid; \
		for i in $$(seq 50); do grep -q READY .emulator/server.log 2>/dev/null && break; sleep 0.2; done; \
		cargo run --quiet -p harness --bin local-fleet -- $(LOCAL_PORT); \
	fi

emulator-stop:
	@if [ -f .emulator/server.pid ]; then kill $$(cat .emulator/server.pid) 2>/dev/null || true; rm -f .emulator/server.pid; echo "==> emulator stopped"; fi

# cargo-lambda (pinned, from PyPI) runs the real binary behind a local Lambda runtime API.
$(VENV)/bin/cargo-lambda: requirements-invoke.txt | setup
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-invoke.txt
	touch $@

# Runs the function locally (cargo lambda watch) against the emulator and invokes it with
# $(EVENT); the function's own log goes to .emulator/watch.log.
invoke: emulator $(VENV)/bin/cargo-lambda
	@export PATH="$(CURDIR)/$(VENV)/bin:$$PATH"; \
	cargo lambda watch -p consistent-snapshot --bin consistent-snapshot --ignore-changes \
		--invoke-port $(INVOKE_PORT) --env-file .emulator/local.env > .emulator/watch.log 2>&1 & \
	watch=$$!; trap 'kill $$watch 2>/dev/null' EXIT; \
	for i in $$(seq 100); do grep -q -i "listening\|invoke server" .emulator/watch.log 2>/dev/null && break; sleep 0.3; done; \
	echo "==> invoking consistent-snapshot with $(EVENT)"; \
	cargo lambda invoke consistent-snapshot --invoke-port $(INVOKE_PORT) --data-file $(EVENT) --output-format json

release:
	cargo lambda build --release --arm64 -p consistent-snapshot

deploy:
	sam build && sam deploy --guided

clean:
	cargo clean
	rm -rf $(VENV) .emulator .aws-sam
