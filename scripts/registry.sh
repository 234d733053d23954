#!/usr/bin/env bash
# A private, throwaway container registry (Debian's docker-registry, the CNCF distribution
# server) on a free loopback port, for tests and benchmarks.
#
#   registry.sh up DIR [--no-auth] [--notify URL] [--watch PID]
#                          start, wait until it answers, print its URL
#   registry.sh down DIR   stop it and delete its storage
#
# The URL is `http://USER:PASSWORD@127.0.0.1:PORT` (no user part with --no-auth): a user
# `stagehand` with a random password in an htpasswd file (bcrypt, `htpasswd -B`), so tests can
# check what a wrong one does. DIR/config.json holds the same credentials as a docker
# config.json (`auths`), DIR/address the `host:port`. Storage is DIR/storage, over plain HTTP.
# With --notify, the registry POSTs its notification envelopes (pushes, deletes) to URL.
# With --watch, a watchdog stops the registry once process PID is gone, however it ended.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
self="$here/$(basename "$0")"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

down() {
  local dir=$1 pid
  [ -f "$dir/pid" ] || return 0
  pid=$(cat "$dir/pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -rf "$dir/pid" "$dir/storage" "$dir/address" "$dir/url"
}

up() {
  local dir=$1 auth=$2 notify=$3 watch=$4 port password
  command -v docker-registry >/dev/null 2>&1 || { echo "docker-registry not found: run scripts/setup.sh" >&2; exit 1; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ -f "$dir/pid" ] && down "$dir"
  port=$(free_port)
  {
    echo "version: 0.1"
    echo "log: {level: warn, accesslog: {disabled: true}}"
    echo "storage:"
    echo "  filesystem: {rootdirectory: $dir/storage}"
    echo "  delete: {enabled: true}"
    # Nothing to clean up in a throwaway registry, and the purge walks storage at start.
    echo "  maintenance: {uploadpurging: {enabled: false}}"
    echo "http: {addr: 127.0.0.1:$port, secret: $(openssl rand -hex 16)}"
  } > "$dir/config.yml"
  if $auth; then
    command -v htpasswd >/dev/null 2>&1 || { echo "htpasswd not found: run scripts/setup.sh" >&2; exit 1; }
    password=$(openssl rand -hex 16)
    # bcrypt's lowest cost: the registry checks the password on every request, and tests and
    # benchmarks make thousands.
    (umask 077 && htpasswd -Bbn -C 4 stagehand "$password" > "$dir/htpasswd")
    printf 'auth:\n  htpasswd: {realm: stagehand-test, path: %s}\n' "$dir/htpasswd" >> "$dir/config.yml"
    (umask 077 && printf '{"auths":{"127.0.0.1:%s":{"auth":"%s"}}}\n' "$port" \
      "$(printf 'stagehand:%s' "$password" | base64 -w0)" > "$dir/config.json")
  else
    rm -f "$dir/htpasswd" "$dir/config.json"
  fi
  if [ -n "$notify" ]; then
    # Sent at once and retried briefly: tests wait for the event, not for a backoff.
    printf 'notifications:\n  endpoints:\n    - {name: stagehand, url: "%s", timeout: 2s, threshold: 3, backoff: 200ms}\n' \
      "$notify" >> "$dir/config.yml"
  fi

  setsid docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 < /dev/null &
  local pid=$!
  echo "$pid" > "$dir/pid"

  local url="http://127.0.0.1:$port"
  $auth && url="http://stagehand:$password@127.0.0.1:$port"
  for _ in $(seq 300); do
    # /v2/ answers 401 with auth on, 200 without: either means it serves.
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/" || true)
    if [ "$code" = 200 ] || [ "$code" = 401 ]; then
      if [ -n "$watch" ]; then
        setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down "$3"' \
          watchdog "$watch" "$self" "$dir" >/dev/null 2>&1 < /dev/null &
      fi
      echo "127.0.0.1:$port" > "$dir/address"
      echo "$url" > "$dir/url"
      echo "$url"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || {
      echo "docker-registry died; see $dir/registry.log" >&2
      tail -n 5 "$dir/registry.log" >&2
      down "$dir"
      return 1
    }
    sleep 0.1
  done
  echo "docker-registry not ready after 30 s; see $dir/registry.log" >&2
  down "$dir"
  exit 1
}

case "${1:-}" in
  up)
    [ -n "${2:-}" ] || { echo "usage: $0 up DIR [--no-auth] [--notify URL] [--watch PID]" >&2; exit 2; }
    dir=$2; shift 2
    auth=true notify="" watch=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --no-auth) auth=false; shift ;;
        --notify) notify=${2:?--notify needs a URL}; shift 2 ;;
        --watch) watch=${2:?--watch needs a PID}; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
      esac
    done
    # Another process can take the free port between the probe and the server's bind; such a
    # start dies at once, and a fresh port fixes it.
    for attempt in 1 2 3; do
      up "$dir" "$auth" "$notify" "$watch" && exit 0
      echo "docker-registry start $attempt failed; retrying with a new port" >&2
    done
    exit 1 ;;
  down)
    [ -n "${2:-}" ] || { echo "usage: $0 down DIR" >&2; exit 2; }
    down "$2" ;;
  *) echo "usage: $0 up DIR [--no-auth] [--notify URL] [--watch PID] | down DIR" >&2; exit 2 ;;
esac
