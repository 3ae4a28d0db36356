#!/usr/bin/env bash
# What DPoP adds to a token request, in instructions: runs `tessera serve` under callgrind twice (bearer
# client_credentials, then with a DPoP proof), at a low fixed rate, counts a steady window of each, and
# prints the instructions per request, the proof verifications per request and what one costs.
#
# Instruction counts repeat run to run whatever else the machine does, where CPU time on a shared host
# moves by more than the differences measured here. They are not time: see docs/benchmarks.md.
#
# usage: crates/bench/scripts/dpop-instructions.sh [TESSERA_BIN] [TESSERA_BENCH_BIN]
set -euo pipefail
server=$(realpath "${1:-target/release/tessera}")
bench=$(realpath "${2:-target/release/tessera-bench}")
here=$(dirname "$(realpath "$0")")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
command -v valgrind >/dev/null || { echo "dpop-instructions: valgrind is not installed" >&2; exit 1; }

for scenario in client_credentials client_credentials_dpop; do
    wrapper="$out/serve-$scenario.sh"
    printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/%s.%%p %s "$@" 2>>%s/valgrind.log\n' \
        "$out" "$scenario" "$server" "$out" > "$wrapper"
    chmod +x "$wrapper"
    "$bench" --server "$wrapper" --duration 30 --rate 50 --connections 4 --scenario "$scenario" \
        > "$out/bench-$scenario.txt" 2>&1 &
    bench_pid=$!
    pid=""
    for _ in $(seq 1 100); do
        pid=$(pgrep -f -- "--callgrind-out-file=$out/$scenario" | head -1 || true)
        [ -n "$pid" ] && break
        sleep 0.2
    done
    [ -n "$pid" ] || { echo "dpop-instructions: the server did not start" >&2; exit 1; }
    # The bench makes its proofs before the load starts: wait for its four connections to the server,
    # then 2 s more, and count 8 seconds of steady load.
    port=$(tr '\0' ' ' < "/proc/$pid/cmdline" | grep -o -- '--listen 127.0.0.1:[0-9]*' | cut -d: -f2)
    for _ in $(seq 1 600); do
        [ "$(ss -Htn state established "( sport = :$port )" | wc -l)" -ge 4 ] && break
        sleep 0.2
    done
    sleep 2
    callgrind_control -z "$pid" >/dev/null
    sleep 8
    callgrind_control -d "$pid" >/dev/null
    wait "$bench_pid"
done
python3 "$here/callgrind_per_request.py" "$out"/client_credentials.*.1 "$out"/client_credentials_dpop.*.1
