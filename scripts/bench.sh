#!/usr/bin/env bash
# Runs the benchmarks that need a broker: starts the test broker (see scripts/broker.sh) and runs
# the throughput comparison (runtime vs raw rdkafka loop, same broker, same run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/broker.sh
source scripts/broker.sh
trap broker_stop EXIT
broker_start
cargo bench -p medallion-benches --bench throughput "$@"
