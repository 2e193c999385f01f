#!/usr/bin/env bash
# The one command that runs every medallion test: formatting, lints, unit tests, fault injection
# on librdkafka's mock cluster, and end-to-end tests on a real Kafka-protocol broker (Tansu 0.6.0,
# installed into ~/.cargo/bin on first use and started here on a free loopback port).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/broker.sh
source scripts/broker.sh
trap broker_stop EXIT

echo "== installing the test broker (cached after the first run)"
broker_install
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== building tests"
cargo test --workspace --locked --no-run
broker_start
echo "== cargo test (real broker at $MEDALLION_TEST_BOOTSTRAP)"
# One test at a time: the end-to-end tests share one broker and two cores.
RUST_TEST_THREADS=1 cargo test --workspace --locked
echo "== end-to-end figures"
cat target/tmp/reports/*.txt 2>/dev/null || true
echo "== codec benchmark (figures only; the target is checked by reading them, not by a timed test)"
cargo bench --locked -p medallion-benches --bench codec -- --warm-up-time 1 --measurement-time 2 \
  2>&1 | grep -E "^decode|time:|codec summary|us per|target"
