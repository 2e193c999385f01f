#!/usr/bin/env bash
# Runs the benchmarks that need a broker, on one fast enough not to be their bottleneck:
# noida-db 0.2.3's Kafka-protocol server (PyPI, installed once into
# ~/.cargo/medallion-tools/noida), started here on a free loopback port with its own data.
#   scripts/bench.sh            # throughput (runtime vs raw loop) and stages (the four binaries)
#   scripts/bench.sh stages     # only the stage binaries: rounds, latency, ids held, sweep
#   scripts/bench.sh sweep      # bytes and cost per key of each stage's state (no broker), then
#                               # the stages' cardinality sweep and ids-held runs
#   scripts/bench.sh throughput
# Every figure is printed beside the raw copy loop's on the same broker in the same run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NOIDA_VERSION="0.2.3"
TOOLS="${MEDALLION_TOOLS_ROOT:-$HOME/.cargo}/medallion-tools/noida"
NOIDA_BIN="$TOOLS/noida_db/noida-db"
if ! [ -x "$NOIDA_BIN" ] || ! grep -q "^Version: $NOIDA_VERSION" "$TOOLS"/noida_db-*.dist-info/METADATA 2>/dev/null; then
  rm -rf "$TOOLS"
  python3 -m pip install --quiet --disable-pip-version-check --target "$TOOLS" "noida-db==$NOIDA_VERSION"
fi

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
DATA="$(mktemp -d -t medallion-bench-broker.XXXXXX)"
# The native binary directly: killing the Python wrapper would leave the server running.
"$NOIDA_BIN" start --only kafka --kafka-port "$PORT" --data-dir "$DATA/data" >"$DATA/broker.log" 2>&1 &
BROKER_PID=$!
stop_broker() {
  kill "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
  rm -rf "$DATA"
}
trap stop_broker EXIT
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 0.1
done
export MEDALLION_TEST_BOOTSTRAP="127.0.0.1:$PORT"
# The benches read the broker's CPU time from /proc: it shares the cores with what they measure.
export MEDALLION_BENCH_BROKER_PID="$BROKER_PID"
echo "bench broker: noida-db $NOIDA_VERSION on $MEDALLION_TEST_BOOTSTRAP" >&2

which="${1:-all}"
if [ "$which" = all ] || [ "$which" = throughput ]; then
  cargo bench --locked -p medallion-benches --bench throughput
fi
if [ "$which" = all ] || [ "$which" = sweep ]; then
  cargo bench --locked -p medallion-benches --bench state
fi
if [ "$which" = all ] || [ "$which" = stages ] || [ "$which" = sweep ]; then
  cargo build --locked --release --bins
  parts="${MEDALLION_BENCH_PARTS:-rounds,latency,held,sweep}"
  if [ "$which" = sweep ]; then parts="held,sweep"; fi
  MEDALLION_BENCH_BIN_DIR="${MEDALLION_BENCH_BIN_DIR:-$(pwd)/target/release}" MEDALLION_BENCH_PARTS="$parts" \
    cargo bench --locked -p medallion-benches --bench stages
fi
