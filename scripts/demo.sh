#!/usr/bin/env bash
# The main job on a local default: sets up what is missing, builds stagehand, turns the demo
# pipeline in environments/ into a Git repository of its own, reconciles its dev environment
# into a local kube-apiserver, and runs the service on it.
#
#   scripts/demo.sh           run until Ctrl-C
#   scripts/demo.sh --check   run the demo's checks, then stop (used by the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
repo_root=$(pwd)
check_only=false
[ "${1:-}" = "--check" ] && check_only=true

scripts/setup.sh >/dev/null
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
load_tools

echo "== building stagehand"
cargo build --quiet --bin stagehand
stagehand="$repo_root/target/debug/stagehand"

work=$(mktemp -d -t stagehand-demo.XXXXXX)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [ -d "$work/cluster" ] && scripts/local-cluster.sh down "$work/cluster"
  rm -rf "$work"
}
trap cleanup EXIT

echo "== demo GitOps repository in $work/gitops"
cp -r environments "$work/gitops"
git -C "$work/gitops" init -q -b main
git -C "$work/gitops" add -A
git -C "$work/gitops" -c user.name=demo -c user.email=demo@example.test commit -q -m "Demo pipeline"

"$stagehand" pipeline validate --pipeline "$work/gitops/pipeline.yaml"

echo "== a local kube-apiserver for the demo's clusters"
export KUBECONFIG
KUBECONFIG=$(scripts/local-cluster.sh up "$work/cluster" --watch $$)

echo "== stagehand sync --env dev: render from Git, decrypt the SOPS Secret, apply, prune"
SOPS_AGE_KEY_FILE="$work/gitops/keys/dev.agekey" "$stagehand" sync --log-level error \
  --pipeline "$work/gitops/pipeline.yaml" --env dev --state-dir "$work/state" > "$work/sync.json"
"$STAGEHAND_PYTHON" - "$work/sync.json" <<'PY'
import json, sys
status = json.load(open(sys.argv[1]))
print(f"dev: {status['reason']}: {status['message']}")
for o in status["objects"]:
    ref = o["object"]
    print(f"  {o['action']:<10} {ref['kind']} {ref.get('namespace', '')}/{ref['name']}")
PY
"$STAGEHAND_KUBECTL" get secret shop-db -n shop-dev -o jsonpath='{.data}' | "$STAGEHAND_PYTHON" -c \
  'import json,sys; print("  Secret shop-db in the cluster has keys:", sorted(json.load(sys.stdin)))'
echo "== stagehand diff --env dev after the sync (nothing to change)"
SOPS_AGE_KEY_FILE="$work/gitops/keys/dev.agekey" "$stagehand" diff --log-level error \
  --pipeline "$work/gitops/pipeline.yaml" --env dev --state-dir "$work/state" > "$work/diff.json"
"$STAGEHAND_PYTHON" - "$work/diff.json" <<'PY'
import json, sys
plan = json.load(open(sys.argv[1]))
changes = [f"{o['change']} {o['object']['kind']}/{o['object']['name']}" for o in plan["objects"]]
print(f"  {len(changes)} changes" + "".join(f"\n  {c}" for c in changes))
if changes:
    sys.exit("the environment is not in sync after stagehand sync")
PY

echo "== starting stagehand serve: every environment reconciled continuously"
# The service holds every environment's age identity; plaintext stays inside it.
cat "$work"/gitops/keys/*.agekey > "$work/service.agekeys"
SOPS_AGE_KEY_FILE="$work/service.agekeys" "$stagehand" serve --listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 --pipeline "$work/gitops/pipeline.yaml" \
  --state-dir "$work/state" > "$work/serve.out" 2> "$work/serve.log" &
server_pid=$!
addr=
for _ in $(seq 100); do
  addr=$(sed -n 's/^listening on //p' "$work/serve.out")
  [ -n "$addr" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "stagehand did not start" >&2; cat "$work/serve.log" >&2; exit 1; }
echo "stagehand listens on $addr"

echo "== gRPC health and reflection, as a generic client sees them"
"$STAGEHAND_PYTHON" tests/it/support/grpc_probe.py "$addr"
echo "== environments, through the stagehand CLI"
"$stagehand" env list --server "http://$addr"
echo "== each environment applied by the service (GetEnvironment through a reflection-only client)"
for env in dev staging prod; do
  for _ in $(seq 300); do
    status=$("$STAGEHAND_PYTHON" tests/it/support/generic_client.py "$addr" call \
      stagehand.v1.EnvironmentService/GetEnvironment "{\"name\": \"$env\"}")
    applied=$(printf '%s' "$status" | "$STAGEHAND_PYTHON" -c \
      'import json,sys; s=json.load(sys.stdin).get("status", {}); print(s.get("appliedRevision", ""), s.get("reason", ""))')
    [ -n "${applied%% *}" ] && break
    sleep 0.2
  done
  [ -n "${applied%% *}" ] || { echo "$env was not applied: $status" >&2; cat "$work/serve.log" >&2; exit 1; }
  echo "  $env: applied ${applied%% *} (${applied#* })"
done
echo "== the same through the stagehand CLI: status, a sync that waits for its pass, history"
"$stagehand" status --server "http://$addr" -o table
"$stagehand" env sync dev --wait --server "http://$addr" -o table
"$stagehand" env history dev --server "http://$addr" -o table
http=$(sed -n 's/^http listening on //p' "$work/serve.out")
echo "== /metrics on $http"
"$STAGEHAND_PYTHON" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
  "http://$http/metrics" | grep '^stagehand_reconcile_passes_total' || true

if $check_only; then
  echo "demo checks passed"
  exit 0
fi
echo "== serving; logs in $work/serve.log; Ctrl-C stops"
wait "$server_pid"
