#!/usr/bin/env bash
# Measures the image pipeline with ferric-image-bench (used by `make bench`):
#
#   scripts/bench-image.sh [FERRIC-IMAGE-BENCH OPTIONS...]   # e.g. --runs 5, --only qcow2
#
# Builds the release binary and runs it in $BENCH_DIR (default
# /var/tmp/ferric-image-bench, which should sit on a real disk, not tmpfs:
# the stream benchmark writes with O_DIRECT). Needs qemu-img and about
# 8 GiB of free space at peak. Every figure is printed with its baseline,
# measured in the same run on the same files.
set -euo pipefail

cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-/var/tmp/ferric-image-bench}

command -v qemu-img >/dev/null || { echo "bench-image: qemu-img is needed (apt install qemu-utils)" >&2; exit 1; }
cargo build --release -q -p ferric-bench --bin ferric-image-bench
trap 'rm -rf "$BENCH_DIR"' EXIT
target/release/ferric-image-bench --dir "$BENCH_DIR" "$@"
