#!/usr/bin/env bash
# Installs (once, cached) and starts the real Kafka-protocol broker the tests use: Tansu 0.6.0
# with durable SQLite storage on a free loopback port. Meant to be sourced:
#   source scripts/broker.sh && broker_start   # exports MEDALLION_TEST_BOOTSTRAP, MEDALLION_TEST_TANSU
#   broker_stop
# The binary is cached under $MEDALLION_TOOLS_ROOT/bin (default ~/.cargo/bin).

TANSU_VERSION="0.6.0"
MEDALLION_TOOLS_ROOT="${MEDALLION_TOOLS_ROOT:-$HOME/.cargo}"
TANSU_BIN="$MEDALLION_TOOLS_ROOT/bin/tansu"

broker_install() {
  if [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  echo "installing tansu $TANSU_VERSION into $MEDALLION_TOOLS_ROOT (about 15 minutes, once)" >&2
  # --locked is required: newer dependencies do not compile.
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
    --root "$MEDALLION_TOOLS_ROOT"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

broker_start() {
  broker_install
  BROKER_DIR="$(mktemp -d -t medallion-broker.XXXXXX)"
  BROKER_PORT="$(free_port)"
  # The sqlite path is relative to the broker's working directory.
  (cd "$BROKER_DIR" && exec "$TANSU_BIN" broker \
      --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
      --storage-engine "sqlite://tansu.db" \
      --cluster-id medallion-test >"$BROKER_DIR/broker.log" 2>&1) &
  BROKER_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null; then
      broker_index_headers || return 1
      export MEDALLION_TEST_BOOTSTRAP="127.0.0.1:$BROKER_PORT"
      # Tests that stop and restart a broker start their own from the same binary.
      export MEDALLION_TEST_TANSU="$TANSU_BIN"
      echo "broker: tansu $TANSU_VERSION on $MEDALLION_TEST_BOOTSTRAP (pid $BROKER_PID, data $BROKER_DIR)" >&2
      return 0
    fi
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      echo "broker: tansu exited at start-up; its log:" >&2
      cat "$BROKER_DIR/broker.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "broker: tansu did not listen on port $BROKER_PORT within 10 s" >&2
  return 1
}

# Tansu 0.6.0's SQLite schema has no index on `header`: every fetched record scans every header
# ever written, so a fetch slows down as records with headers (ours all have some) accumulate,
# until the broker stops answering heartbeats. The tests' broker gets the index it lacks.
broker_index_headers() {
  python3 - "$BROKER_DIR/tansu.db" <<'PY'
import sqlite3, sys, time
deadline = time.time() + 10
while True:
    db = sqlite3.connect(sys.argv[1], timeout=30)
    tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
    if "header" in tables:
        db.execute("create index if not exists medallion_header_record on header (topition, offset_id)")
        db.commit()
        break
    db.close()
    if time.time() > deadline:
        sys.exit("broker: tansu did not create its schema within 10 s")
    time.sleep(0.1)
PY
}

broker_stop() {
  if [ -n "${BROKER_PID:-}" ]; then
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
  fi
  if [ -n "${BROKER_DIR:-}" ]; then
    rm -rf "$BROKER_DIR"
    BROKER_DIR=""
  fi
}
