#!/usr/bin/env bash
# A private etcd + kube-apiserver on free loopback ports, for tests and the local demo.
#
#   local-cluster.sh up DIR [--watch PID]   start, wait until ready, write DIR/kubeconfig
#   local-cluster.sh down DIR               stop both and delete DIR's etcd data
#
# With --watch, a watchdog stops the cluster once process PID is gone, however it ended (a
# panicking or killed test process included). Binaries come from scripts/setup.sh's env.sh
# (STAGEHAND_ETCD, STAGEHAND_KUBE_APISERVER), overridable by the same variables.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
self="$here/$(basename "$0")"
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

require_tools() {
  load_tools
  [ -x "${STAGEHAND_ETCD:-}" ] || { echo "etcd not found: run scripts/setup.sh" >&2; exit 1; }
  [ -x "${STAGEHAND_KUBE_APISERVER:-}" ] || { echo "kube-apiserver not found: run scripts/setup.sh" >&2; exit 1; }
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

down() {
  local dir=$1
  # A node started by scripts/local-node.sh goes first: its kubelet would spin on a gone apiserver.
  [ -f "$dir/node-pids" ] && "$here/local-node.sh" down "$dir"
  [ -f "$dir/pids" ] || return 0
  # apiserver first, so it does not spin on a vanished etcd.
  for pid in $(tac "$dir/pids"); do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for pid in $(cat "$dir/pids"); do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in $(cat "$dir/pids"); do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$dir/pids" "$dir/etcd"
}

up() {
  local dir=$1 watch=${2:-}
  require_tools
  mkdir -p "$dir/certs"
  dir=$(cd "$dir" && pwd)
  [ -f "$dir/pids" ] && down "$dir"
  local etcd_port peer_port api_port token
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  token=$(openssl rand -hex 16)
  [ -f "$dir/sa.key" ] || openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  echo "$token,admin,admin,system:masters" > "$dir/tokens.csv"

  setsid "$STAGEHAND_ETCD" --data-dir "$dir/etcd" --name stagehand-test \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "stagehand-test=http://127.0.0.1:$peer_port" \
    >"$dir/etcd.log" 2>&1 < /dev/null &
  echo $! > "$dir/pids"
  setsid "$STAGEHAND_KUBE_APISERVER" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --secure-port="$api_port" --cert-dir="$dir/certs" \
    --token-auth-file="$dir/tokens.csv" --authorization-mode=RBAC --insecure-port=0 \
    --service-cluster-ip-range=10.96.0.0/16 \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \
    >"$dir/apiserver.log" 2>&1 < /dev/null &
  echo $! >> "$dir/pids"

  if [ -n "$watch" ]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down "$3"' \
      watchdog "$watch" "$self" "$dir" >/dev/null 2>&1 < /dev/null &
  fi

  local url="https://127.0.0.1:$api_port"
  cat > "$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $url
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: admin}
current-context: local
KC
  # Ready once /readyz answers and the bootstrap namespace exists (it appears a little later).
  for _ in $(seq 600); do
    if curl -fsk -H "Authorization: Bearer $token" "$url/readyz" >/dev/null 2>&1 \
       && curl -fsk -H "Authorization: Bearer $token" "$url/api/v1/namespaces/default" >/dev/null 2>&1; then
      echo "$dir/kubeconfig"
      return 0
    fi
    for pid in $(cat "$dir/pids"); do
      kill -0 "$pid" 2>/dev/null || { echo "local cluster died; see $dir/etcd.log and $dir/apiserver.log" >&2; tail -n 5 "$dir/apiserver.log" "$dir/etcd.log" >&2; down "$dir"; return 1; }
    done
    sleep 0.1
  done
  echo "local cluster not ready after 60 s; see $dir/apiserver.log" >&2
  down "$dir"
  exit 1
}

case "${1:-}" in
  up)
    [ -n "${2:-}" ] || { echo "usage: $0 up DIR [--watch PID]" >&2; exit 2; }
    [ "${3:-}" = "--watch" ] && : "${4:?--watch needs a PID}"
    # A free port can be taken by another process between the probe and etcd's bind; such a
    # start dies at once, and a fresh set of ports fixes it.
    for attempt in 1 2 3; do
      up "$2" "${4:-}" && exit 0
      echo "local cluster start $attempt failed; retrying with new ports" >&2
    done
    exit 1 ;;
  down)
    [ -n "${2:-}" ] || { echo "usage: $0 down DIR" >&2; exit 2; }
    down "$2" ;;
  *) echo "usage: $0 up DIR [--watch PID] | down DIR" >&2; exit 2 ;;
esac
