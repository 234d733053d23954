#!/usr/bin/env bash
# A private, throwaway PostgreSQL server on a free loopback port, for tests.
#
#   postgres.sh up DIR [--watch PID]   start, wait until it accepts connections, print its URL
#   postgres.sh down DIR               stop it and delete its data
#
# The URL names a superuser `stagehand` with a random password (scram-sha-256, so tests can
# check what a wrong one does) and the `postgres` database; tests create their own databases.
# Debian's server binaries (the newest /usr/lib/postgresql/*/bin, which scripts/setup.sh
# installs; STAGEHAND_POSTGRES_BIN overrides). fsync is off: the data is thrown away.
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user that
# Debian's package creates, with its data in a directory of that user's (DIR/data names it).
# With --watch, a watchdog stops the server once process PID is gone, however it ended.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
self="$here/$(basename "$0")"

bin_dir() {
  if [ -n "${STAGEHAND_POSTGRES_BIN:-}" ]; then
    printf '%s\n' "$STAGEHAND_POSTGRES_BIN"
    return
  fi
  local newest
  newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [ -x "$newest/postgres" ] || { echo "PostgreSQL's server not found: run scripts/setup.sh" >&2; exit 1; }
  printf '%s\n' "$newest"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Runs a command as the server's user: `postgres` when we are root, else ourselves.
as_server_user() {
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else
    "$@"
  fi
}
export -f as_server_user

down() {
  local dir=$1 data pid
  [ -f "$dir/data" ] || return 0
  data=$(cat "$dir/data")
  if [ -f "$data/pgdata/postmaster.pid" ]; then
    pid=$(head -n1 "$data/pgdata/postmaster.pid")
    # SIGINT is the fast shutdown: sessions are ended, nothing is waited for.
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$data" "$dir/data" "$dir/url"
}

up() {
  local dir=$1 watch=${2:-} bin data port password
  bin=$(bin_dir)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ -f "$dir/data" ] && down "$dir"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { echo "no postgres user: run scripts/setup.sh" >&2; exit 1; }
    data=$(as_server_user mktemp -d -t stagehand-postgres.XXXXXX)
  else
    data="$dir/server"
    mkdir -p "$data"
  fi
  echo "$data" > "$dir/data"
  password=$(openssl rand -hex 16)
  (umask 077 && printf '%s\n' "$password" | as_server_user tee "$data/password" >/dev/null)
  as_server_user "$bin/initdb" -D "$data/pgdata" -U stagehand --auth=scram-sha-256 \
    --pwfile="$data/password" --no-sync -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; down "$dir"; return 1; }
  port=$(free_port)
  # No unix socket: the tests connect over TCP, and /var/run/postgresql may not exist.
  setsid bash -c 'as_server_user "$@"' as_server_user \
    "$bin/postgres" -D "$data/pgdata" -c listen_addresses=127.0.0.1 -p "$port" \
    -c unix_socket_directories= -c fsync=off -c full_page_writes=off -c max_connections=300 \
    >"$data/postgres.log" 2>&1 < /dev/null &
  local pid=$!

  if [ -n "$watch" ]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down "$3"' \
      watchdog "$watch" "$self" "$dir" >/dev/null 2>&1 < /dev/null &
  fi

  local url="postgresql://stagehand:$password@127.0.0.1:$port/postgres"
  for _ in $(seq 300); do
    if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -d postgres; then
      echo "$url" > "$dir/url"
      echo "$url"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || {
      echo "PostgreSQL died; see $data/postgres.log" >&2
      tail -n 5 "$data/postgres.log" >&2
      down "$dir"
      return 1
    }
    sleep 0.1
  done
  echo "PostgreSQL not ready after 30 s; see $data/postgres.log" >&2
  down "$dir"
  exit 1
}

case "${1:-}" in
  up)
    [ -n "${2:-}" ] || { echo "usage: $0 up DIR [--watch PID]" >&2; exit 2; }
    [ "${3:-}" = "--watch" ] && : "${4:?--watch needs a PID}"
    # Another process can take the free port between the probe and the server's bind; such a
    # start dies at once, and a fresh port fixes it.
    for attempt in 1 2 3; do
      up "$2" "${4:-}" && exit 0
      echo "PostgreSQL start $attempt failed; retrying with a new port" >&2
    done
    exit 1 ;;
  down)
    [ -n "${2:-}" ] || { echo "usage: $0 down DIR" >&2; exit 2; }
    down "$2" ;;
  *) echo "usage: $0 up DIR [--watch PID] | down DIR" >&2; exit 2 ;;
esac
