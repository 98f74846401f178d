#!/usr/bin/env bash
# Measures ferric-agent writing a downloaded image against `curl | dd`
# (used by `make bench`; needs root for the loop device, and curl):
#
#   scripts/bench-agent.sh [FERRIC-AGENT-BENCH OPTIONS...]   # e.g. --runs 5, --size-mib 1024
#
# Builds the static agent (scripts/build-agent-static) and the benchmark,
# then runs it in $BENCH_DIR (default /dev/shm/ferric-agent-bench: tmpfs,
# as IPA's published figures; about 4 GiB of free memory at peak).
set -euo pipefail

cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-/dev/shm/ferric-agent-bench}

command -v curl >/dev/null || { echo "bench-agent: curl is needed" >&2; exit 1; }
agent=$(scripts/build-agent-static)
cargo build --release -q -p ferric-bench --bin ferric-agent-bench
trap 'rm -rf "$BENCH_DIR"' EXIT
"${CARGO_TARGET_DIR:-target}/release/ferric-agent-bench" --agent "$agent" --dir "$BENCH_DIR" "$@"
