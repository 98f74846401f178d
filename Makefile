# Ferric's developer entry points. On a fresh Debian 12 machine, as root:
#   make demo    installs what it needs, builds, provisions a QEMU VM through its BMC
#   make test    installs what the tests need, runs every check CI runs
# Other targets: build, lint, rust-test, fuzz, api-test and e2e-test (need a build), bench,
# bench-image, bench-agent, agent-static, deps.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
# Each recipe is one shell script, so `trap` and variables span its lines.
.ONESHELL:

CARGO ?= cargo
PYTEST ?= .venv/bin/pytest
PYTEST_ARGS ?=
# The throwaway PostgreSQL of `make test` (scripts/pg-test-server).
PG_DIR ?= .work/pg
PG_PORT ?= 55432

.PHONY: all build lint rust-test api-test e2e-test fuzz test demo demo-fake bench bench-image bench-agent agent-static deps

all: build

deps:
	scripts/install-deps

build:
	$(CARGO) build --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Agents started by tests run on this machine: they must never power it off.
export FERRIC_AGENT_NO_POWER := 1

# The Rust tests (nextest when installed, and the doc tests, which nextest
# does not run); store tests use FERRIC_TEST_POSTGRES_URL when it is set.
define rust_tests
	if command -v cargo-nextest >/dev/null 2>&1; then
		$(CARGO) nextest run --workspace --no-fail-fast
	else
		$(CARGO) test --workspace --no-fail-fast
	fi && $(CARGO) test --workspace --doc
endef

rust-test:
	$(rust_tests)

# The end-to-end tests against target/debug/ferricd with the real OpenStack clients.
api-test:
	$(PYTEST) tests/api $(PYTEST_ARGS)

# cargo fuzz on the image crate's parsers, 12 s a target (FUZZ_SECONDS).
FUZZ_SECONDS ?= 12
fuzz:
	scripts/fuzz-image $(FUZZ_SECONDS)

# A QEMU VM provisioned through ipmi_sim, iPXE and dnsmasq (needs root and a build).
e2e-test:
	$(PYTEST) tests/e2e $(PYTEST_ARGS)

# Everything CI checks. Every step runs even when an earlier one failed (a
# failed build skips the steps that need its binaries); any failure fails
# the target. PostgreSQL is stopped whatever happens.
test: deps
	@failed=()
	step() {
		local name=$$1; shift
		echo "==> $$name: $$*"
		local start=$$SECONDS
		if "$$@"; then
			echo "==> $$name: ok ($$((SECONDS - start)) s)"
		else
			echo "==> $$name: FAILED ($$((SECONDS - start)) s)"
			failed+=("$$name")
			return 1
		fi
	}
	pg_dir=$(PG_DIR)
	mkdir -p "$$pg_dir"
	# As root the cluster runs as `postgres`, which may not reach a clone under
	# a private home directory: then the cluster lives under /tmp instead.
	if [[ $$(id -u) -eq 0 ]] && ! runuser -u postgres -- test -x "$$(cd "$$pg_dir/.." && pwd -P)" 2>/dev/null; then
		pg_dir=$${TMPDIR:-/tmp}/ferric-make-test-pg
		echo "==> the postgres user cannot reach $(PG_DIR); the test cluster lives in $$pg_dir"
	fi
	trap 'scripts/pg-test-server stop "$$pg_dir" || true' EXIT
	trap 'exit 143' TERM INT
	FERRIC_TEST_POSTGRES_URL=$$(scripts/pg-test-server start "$$pg_dir" $(PG_PORT))
	export FERRIC_TEST_POSTGRES_URL FERRIC_REQUIRE_POSTGRES=1
	echo "==> PostgreSQL: $$FERRIC_TEST_POSTGRES_URL"
	step fmt $(CARGO) fmt --all -- --check || true
	step clippy $(CARGO) clippy --workspace --all-targets -- -D warnings || true
	if step build $(CARGO) build --workspace; then
		# The ramdisk's boot test takes the static agent and the kernel that
		# install-deps fetched, and must not skip for want of them.
		agent_static() { FERRIC_AGENT_STATIC=$$(scripts/build-agent-static) && export FERRIC_AGENT_STATIC; }
		step agent-static agent_static || true
		export FERRIC_REQUIRE_KERNEL=1
		rust_tests() {
			$(rust_tests)
		}
		step rust-tests rust_tests || true
		step fuzz scripts/fuzz-image $(FUZZ_SECONDS) || true
		step api-tests $(PYTEST) tests/api $(PYTEST_ARGS) || true
		step e2e-tests $(PYTEST) tests/e2e $(PYTEST_ARGS) || true
	fi
	if (( $${#failed[@]} )); then
		echo "==> make test: FAILED: $${failed[*]}"
		exit 1
	fi
	echo "==> make test: every step passed"

demo: deps
	scripts/demo

# The quick tour without a VM: a fake-hardware node through its whole life.
demo-fake: deps
	scripts/demo-fake

bench:
	scripts/bench-api.sh
	scripts/bench-image.sh
	scripts/bench-agent.sh

bench-image:
	scripts/bench-image.sh

bench-agent:
	scripts/bench-agent.sh

# The static ferric-agent for the deploy ramdisk (prints its path).
agent-static:
	scripts/build-agent-static
