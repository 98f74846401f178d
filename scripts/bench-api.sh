#!/usr/bin/env bash
# Measures ferricd's API with ferric-bench (used by `make bench`).
#
#   scripts/bench-api.sh [FERRIC-BENCH OPTIONS...]    # e.g. --json, --nodes 500
#
# Builds both release binaries, starts ferricd on a free loopback port with a
# fresh SQLite database in a temporary directory (periodic power sync off, so
# it does not disturb the measurement), waits for `GET /` to answer, runs
# ferric-bench against it with --pid, prints the server's peak RSS, then
# stops ferricd and removes the directory. Runs unattended; the exit status
# is ferric-bench's (non-zero only when the run itself failed, not when a
# figure misses its target).
set -euo pipefail

cd "$(dirname "$0")/.."

STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-30}
LOG_LEVEL=${FERRIC_BENCH_LOG_LEVEL:-info}

say() {
    echo "bench-api: $*" >&2
}

die() {
    say "$*"
    exit 1
}

# A loopback port nothing listens on (ferricd's start-up catches the rare race).
free_port() {
    local port
    for _ in $(seq 50); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

# True once ferricd answers GET / with an HTTP status line.
answers() {
    local status
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET / HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$1" >&3
    IFS= read -r -t 5 status <&3 || status=
    exec 3<&-
    [[ $status == "HTTP/1.1 200"* ]]
}

# Peak resident memory of a process, in MiB.
peak_rss_mib() {
    awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

say "building (cargo build --release -p ferricd -p ferric-bench)"
cargo build --release -p ferricd -p ferric-bench

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ferric-bench.XXXXXX")
FERRICD_PID=

stop_ferricd() {
    if [[ -n $FERRICD_PID ]] && kill -0 "$FERRICD_PID" 2>/dev/null; then
        kill -TERM "$FERRICD_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$FERRICD_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$FERRICD_PID" 2>/dev/null; then
            say "ferricd did not stop within 10 s of SIGTERM; killing it"
            kill -KILL "$FERRICD_PID" 2>/dev/null || true
        fi
        wait "$FERRICD_PID" 2>/dev/null || true
    fi
    FERRICD_PID=
}

finish() {
    local status=$?
    stop_ferricd
    if [[ $status -ne 0 && -s $TMP/ferricd.log ]]; then
        say "ferricd's log (last 40 lines):"
        tail -n 40 "$TMP/ferricd.log" >&2
    fi
    rm -rf "$TMP"
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

PORT=$(free_port) || die "found no free port on 127.0.0.1"
cat >"$TMP/ferricd.toml" <<EOF
log_level = "$LOG_LEVEL"

[conductor]
# No periodic power reads during the measurement.
power_sync_interval = 0
EOF

say "starting ferricd on 127.0.0.1:$PORT (database and log in $TMP)"
target/release/ferricd --config "$TMP/ferricd.toml" --listen "127.0.0.1:$PORT" \
    --database "sqlite://$TMP/bench.sqlite" >"$TMP/ferricd.log" 2>&1 &
FERRICD_PID=$!

deadline=$((SECONDS + STARTUP_TIMEOUT))
until answers "$PORT" 2>/dev/null; do
    kill -0 "$FERRICD_PID" 2>/dev/null || die "ferricd exited during start-up"
    ((SECONDS < deadline)) || die "ferricd did not answer GET / within $STARTUP_TIMEOUT s"
    sleep 0.1
done

status=0
target/release/ferric-bench --url "http://127.0.0.1:$PORT" --pid "$FERRICD_PID" "$@" || status=$?

kill -0 "$FERRICD_PID" 2>/dev/null || die "ferricd died during the benchmark"
say "ferricd peak RSS (VmHWM): $(peak_rss_mib "$FERRICD_PID") MiB"
exit "$status"
