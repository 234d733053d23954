#!/usr/bin/env bash
# One worker node for a cluster that scripts/local-cluster.sh started: a kubelet that runs pods
# as containers of the local Docker engine (through the 1.20 kubelet's dockershim), and the
# controller-manager and scheduler that turn Deployments into pods on it.
#
#   local-node.sh up DIR      DIR is the cluster's directory; waits until the node takes pods
#   local-node.sh down DIR    stops the three, removes the pods' containers and mounts
#
# `local-cluster.sh down DIR` runs this script's `down` first, so a
# watchdog on the cluster covers the node. The pods' containers are only removed by `down`
# here, or by the next `up`: one such node per machine at a time, since the Docker engine is
# shared. Pods reach the apiserver on loopback only with hostNetwork, as there is no
# kube-proxy. Binaries come from scripts/setup.sh's env.sh (STAGEHAND_KUBELET, ...).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

# The name --pod-infra-container-image gives the pause image built from STAGEHAND_PAUSE.
pause_image=stagehand.local/pause:v1.20.2
node_name=stagehand-node

require_tools() {
  load_tools
  local var
  for var in STAGEHAND_KUBELET STAGEHAND_KUBE_CONTROLLER_MANAGER STAGEHAND_KUBE_SCHEDULER STAGEHAND_PAUSE STAGEHAND_KUBECTL; do
    [ -x "${!var:-}" ] || { echo "$var not found: run scripts/setup.sh on a machine with a running Docker engine" >&2; exit 1; }
  done
  docker info >/dev/null 2>&1 || { echo "the Docker engine is not running" >&2; exit 1; }
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Containers the dockershim made carry this label, whichever node made them.
remove_pod_containers() {
  local ids
  ids=$(docker ps -aq --filter label=io.kubernetes.docker.type)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
}

# The kubelet bind-mounts its root directory onto itself and Secret and token volumes (tmpfs)
# under it.
unmount_under() {
  local root=$1
  awk -v root="$root" '$2 == root || index($2, root "/") == 1 { print $2 }' /proc/mounts | sort -r \
    | while read -r mount; do umount -l "$mount" 2>/dev/null || true; done
}

stop_processes() {
  local dir=$1 pid
  [ -f "$dir/node-pids" ] || return 0
  for pid in $(tac "$dir/node-pids"); do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in $(cat "$dir/node-pids"); do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in $(cat "$dir/node-pids"); do kill -9 "$pid" 2>/dev/null || true; done
  rm -f "$dir/node-pids"
}

down() {
  local dir=$1
  stop_processes "$dir"
  remove_pod_containers
  unmount_under "$dir/kubelet"
}

pause_image_present() {
  docker image inspect "$pause_image" >/dev/null 2>&1
}

start() {
  local dir=$1 bin=$2 log=$3
  shift 3
  setsid "$bin" "$@" >"$dir/$log" 2>&1 < /dev/null &
  echo $! >> "$dir/node-pids"
}

up() {
  local dir=$1
  require_tools
  dir=$(cd "$dir" && pwd)
  local kc=$dir/kubeconfig
  [ -f "$kc" ] || { echo "$kc not found: start the cluster with scripts/local-cluster.sh up $dir" >&2; exit 1; }
  down "$dir"
  if ! pause_image_present; then
    local root
    root=$(mktemp -d)
    install -m 0755 "$STAGEHAND_PAUSE" "$root/pause"
    tar -C "$root" -c . | docker import -c 'ENTRYPOINT ["/pause"]' - "$pause_image" >/dev/null
    rm -rf "$root"
  fi
  mkdir -p "$dir/kubelet" "$dir/dockershim" "$dir/node-certs"

  # Every controller but those that need a cloud or a pod network (node IPAM, routes,
  # LoadBalancer services); the node lifecycle one lifts the node's not-ready taint.
  start "$dir" "$STAGEHAND_KUBE_CONTROLLER_MANAGER" controller-manager.log \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --service-account-private-key-file="$dir/sa.key" --root-ca-file="$dir/certs/apiserver.crt" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --port=0 \
    --controllers='*,-nodeipam,-route,-service,-cloud-node-lifecycle'
  start "$dir" "$STAGEHAND_KUBE_SCHEDULER" scheduler.log \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --port=0
  # No QoS cgroups and no node allocatable enforcement: the engine's cgroupfs hierarchy is the
  # one the sandbox allows. Swap may be on. Image garbage collection and eviction stay off so
  # the locally built images are never deleted (nothing can be pulled back).
  start "$dir" "$STAGEHAND_KUBELET" kubelet.log \
    --kubeconfig="$kc" --container-runtime=docker --pod-infra-container-image="$pause_image" \
    --experimental-dockershim-root-directory="$dir/dockershim" \
    --fail-swap-on=false --cgroups-per-qos=false --enforce-node-allocatable= --cgroup-driver=cgroupfs \
    --root-dir="$dir/kubelet" --cert-dir="$dir/node-certs" --hostname-override="$node_name" \
    --address=127.0.0.1 --port="$(free_port)" --read-only-port=0 --healthz-port=0 \
    --anonymous-auth=false --authentication-token-webhook=false --authorization-mode=AlwaysAllow \
    --image-gc-high-threshold=100 --eviction-hard= --register-node=true

  local kubectl=("$STAGEHAND_KUBECTL" --kubeconfig "$kc")
  for _ in $(seq 1200); do
    if [ "$("${kubectl[@]}" get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}:{.spec.taints}' 2>/dev/null)" = "True:" ]; then
      return 0
    fi
    for pid in $(cat "$dir/node-pids"); do
      kill -0 "$pid" 2>/dev/null || { echo "local node died; see $dir/kubelet.log, controller-manager.log, scheduler.log" >&2; tail -n 5 "$dir/kubelet.log" >&2; down "$dir"; return 1; }
    done
    sleep 0.1
  done
  echo "local node not ready after 120 s; see $dir/kubelet.log" >&2
  down "$dir"
  return 1
}

case "${1:-}" in
  up)
    [ -n "${2:-}" ] || { echo "usage: $0 up DIR" >&2; exit 2; }
    up "$2" ;;
  down)
    [ -n "${2:-}" ] || { echo "usage: $0 down DIR" >&2; exit 2; }
    down "$2" ;;
  *) echo "usage: $0 up DIR | down DIR" >&2; exit 2 ;;
esac
