#!/usr/bin/env bash
# Installs (once, from Debian's packages) and starts the PostgreSQL the audit store's tests use:
# a throwaway cluster in a temporary directory on a free loopback port, trust authentication,
# fsync off. Meant to be sourced:
#   source scripts/postgres.sh && postgres_start   # exports MEDALLION_TEST_POSTGRES (a URL)
#   postgres_stop
# As root, the cluster runs as the `postgres` user the package creates (PostgreSQL refuses root).

postgres_bin_dir() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

postgres_install() {
  if postgres_bin_dir >/dev/null; then
    return 0
  fi
  echo "installing PostgreSQL from Debian's packages (once)" >&2
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  postgres_bin_dir >/dev/null || { echo "postgres: initdb not found after installing postgresql" >&2; return 1; }
}

# Runs a command as the cluster's owner.
postgres_as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

postgres_start() {
  postgres_install || return 1
  local bin
  bin="$(postgres_bin_dir)"
  POSTGRES_DIR="$(mktemp -d -t medallion-postgres.XXXXXX)"
  POSTGRES_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
  if [ "$(id -u)" = 0 ]; then chown postgres "$POSTGRES_DIR"; fi
  POSTGRES_BIN="$bin"
  if ! postgres_as_owner "$bin/initdb" -D "$POSTGRES_DIR/data" -U medallion --auth=trust -E UTF8 \
      >"$POSTGRES_DIR/initdb.log" 2>&1; then
    echo "postgres: initdb failed; its log:" >&2
    cat "$POSTGRES_DIR/initdb.log" >&2
    return 1
  fi
  # In the configuration file, so that a test can stop and start the server with plain pg_ctl.
  cat >>"$POSTGRES_DIR/data/postgresql.conf" <<CONF
port = $POSTGRES_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$POSTGRES_DIR'
fsync = off
CONF
  if ! postgres_as_owner "$bin/pg_ctl" -D "$POSTGRES_DIR/data" -l "$POSTGRES_DIR/server.log" -w -t 30 \
      start >/dev/null; then
    echo "postgres: the server did not start; its log:" >&2
    cat "$POSTGRES_DIR/server.log" >&2
    return 1
  fi
  export MEDALLION_TEST_POSTGRES="postgres://medallion@127.0.0.1:$POSTGRES_PORT/postgres"
  # Tests that stop and start the server (an outage) run pg_ctl on this cluster, as its owner.
  export MEDALLION_TEST_POSTGRES_CTL="$bin/pg_ctl"
  export MEDALLION_TEST_POSTGRES_DATA="$POSTGRES_DIR/data"
  export MEDALLION_TEST_POSTGRES_OWNER=""
  if [ "$(id -u)" = 0 ]; then MEDALLION_TEST_POSTGRES_OWNER="postgres"; fi
  echo "postgres: $("$bin/postgres" --version) on 127.0.0.1:$POSTGRES_PORT (data $POSTGRES_DIR)" >&2
}

postgres_stop() {
  if [ -n "${POSTGRES_DIR:-}" ]; then
    postgres_as_owner "$POSTGRES_BIN/pg_ctl" -D "$POSTGRES_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$POSTGRES_DIR"
    POSTGRES_DIR=""
  fi
}
