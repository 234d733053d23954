#!/usr/bin/env bash
# The main job on a local default: sets up what is missing, builds stagehand, turns the demo
# pipeline in environments/ into a Git repository of its own, reconciles its dev environment
# into a local kube-apiserver, runs the service on it, and promotes a release dev -> staging ->
# prod through the CLI: approvals by two identities, a freeze window released by an override,
# then a rollback of prod.
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
rollout_pid=
prometheus_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [ -n "$prometheus_pid" ] && kill "$prometheus_pid" 2>/dev/null && { wait "$prometheus_pid" 2>/dev/null || true; }
  # It ends by the signal, which is no failure of the demo.
  [ -n "$rollout_pid" ] && kill "$rollout_pid" 2>/dev/null && { wait "$rollout_pid" 2>/dev/null || true; }
  [ -d "$work/cluster" ] && scripts/local-cluster.sh down "$work/cluster"
  rm -rf "$work"
}
trap cleanup EXIT

echo "== demo GitOps repository in $work/gitops"
cp -r environments "$work/gitops"
# prod is frozen from a minute ago for an hour (besides the weekly window), so that the demo's
# promotion into prod is held until a release manager overrides the freeze.
# staging's verification queries a Prometheus the demo starts, scraping the service's /metrics;
# both on free loopback ports. Without Prometheus, staging checks that /metrics answers instead.
free_port() { "$STAGEHAND_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
prometheus_port=$(free_port)
prometheus=$(command -v prometheus || true)
"$STAGEHAND_PYTHON" - "$work/gitops/pipeline.yaml" "$http_port" "$prometheus_port" "$prometheus" <<'PY'
import datetime, sys
path, http_port, prometheus_port, prometheus = sys.argv[1:5]
now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
weekly = '        - {start: "Fri 16:00", end: "Mon 08:00", timezone: Europe/Berlin}\n'
window = (f'        - {{from: "{(now - datetime.timedelta(minutes=1)).isoformat()}", '
          f'until: "{(now + datetime.timedelta(hours=1)).isoformat()}"}}\n')
text = open(path).read()
assert weekly in text, "prod's weekly freeze window moved"
text = text.replace(weekly, weekly + window)
check = """            prometheus:
              url: http://127.0.0.1:9090
              query: stagehand_drifted_objects{environment="staging"}
              below: 1
"""
assert check in text, "staging's verification moved"
if prometheus:
    text = text.replace("127.0.0.1:9090", f"127.0.0.1:{prometheus_port}")
else:
    text = text.replace(check, f"            http: {{url: 'http://127.0.0.1:{http_port}/metrics'}}\n")
open(path, "w").write(text)
PY
git -C "$work/gitops" init -q -b main
# Promotions push to this repository; its work tree follows.
git -C "$work/gitops" config receive.denyCurrentBranch updateInstead
git -C "$work/gitops" add -A
git -C "$work/gitops" -c user.name=demo -c user.email=demo@example.test commit -q -m "Demo pipeline"

"$stagehand" pipeline validate --pipeline "$work/gitops/pipeline.yaml"

echo "== a local kube-apiserver for the demo's clusters"
export KUBECONFIG
KUBECONFIG=$(scripts/local-cluster.sh up "$work/cluster" --watch $$)
# No controller-manager or kubelet: this stand-in reports each Deployment rolled out.
"$STAGEHAND_PYTHON" scripts/demo-rollout.py "$STAGEHAND_KUBECTL" &
rollout_pid=$!

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

echo "== demo identities in $work/tokens.yaml (demo-only tokens, printed here on purpose)"
# riley releases; quinn approves staging (qa) and prod (release-managers); morgan approves prod
# and may override its freeze windows. Never use tokens like these outside the demo.
riley=demo-riley-releaser-token
quinn=demo-quinn-approver-token
morgan=demo-morgan-approver-token
hash() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
cat > "$work/tokens.yaml" <<TOKENS
apiVersion: stagehand.dev/v1alpha1
kind: Tokens
identities:
  - {name: riley, email: riley@example.test, groups: [releasers], tokenSha256: [$(hash $riley)]}
  - {name: quinn, email: quinn@example.test, groups: [qa, release-managers], tokenSha256: [$(hash $quinn)]}
  - {name: morgan, email: morgan@example.test, groups: [release-managers], tokenSha256: [$(hash $morgan)]}
TOKENS
echo "  riley: $riley (releasers); quinn: $quinn (qa, release-managers); morgan: $morgan (release-managers)"

echo "== starting stagehand serve: every environment reconciled continuously"
# The service holds every environment's age identity; plaintext stays inside it.
cat "$work"/gitops/keys/*.agekey > "$work/service.agekeys"
SOPS_AGE_KEY_FILE="$work/service.agekeys" "$stagehand" serve --listen 127.0.0.1:0 \
  --http-listen "127.0.0.1:$http_port" --pipeline "$work/gitops/pipeline.yaml" \
  --tokens-file "$work/tokens.yaml" \
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
if [ -n "$prometheus" ]; then
  echo "== Prometheus on 127.0.0.1:$prometheus_port, scraping stagehand's /metrics (staging's verification asks it)"
  cat > "$work/prometheus.yml" <<PROM
global: {scrape_interval: 1s}
scrape_configs:
  - job_name: stagehand
    static_configs: [{targets: ['127.0.0.1:$http_port']}]
PROM
  "$prometheus" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus" \
    --web.listen-address="127.0.0.1:$prometheus_port" > "$work/prometheus.log" 2>&1 &
  prometheus_pid=$!
  # Ready, and staging's series scraped once: the verification below has data to judge.
  for _ in $(seq 150); do
    "$STAGEHAND_PYTHON" -c '
import json, sys, urllib.parse, urllib.request
query = urllib.parse.quote("stagehand_drifted_objects{environment=\"staging\"}")
answer = json.load(urllib.request.urlopen(f"{sys.argv[1]}/api/v1/query?query={query}"))
sys.exit(not answer["data"]["result"])' "http://127.0.0.1:$prometheus_port" 2>/dev/null && break
    sleep 0.2
  done
else
  echo "== no Prometheus installed: staging's verification is an HTTP check of /metrics"
fi
# Every call below is riley's unless `as` names another identity.
export STAGEHAND_TOKEN=$riley STAGEHAND_SERVER="http://$addr"
as() { local token=$1; shift; STAGEHAND_TOKEN=$token "$stagehand" "$@"; }
field() { "$STAGEHAND_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
applied() {
  "$stagehand" status "$1" -o json | "$STAGEHAND_PYTHON" -c \
    'import json,sys; print(json.load(sys.stdin)["status"]["appliedRevision"])'
}
# Waits until promotion $1 is Approved and held by a blocker of kind $2 (a freeze window).
# Overriding before Approved can race the approval's own transition (see the report of the
# promotion CLI branch), so the demo waits for it.
held_by() {
  for _ in $(seq 300); do
    "$stagehand" promotion "$1" -o json | "$STAGEHAND_PYTHON" -c \
      'import json,sys; p=json.load(sys.stdin); sys.exit(p["state"] != "Approved" or sys.argv[1] not in [b["kind"] for b in p["blockers"]])' "$2" \
      && return 0
    sleep 0.2
  done
  echo "promotion $1 was never held by $2" >&2; cat "$work/serve.log" >&2; exit 1
}

echo "== gRPC health and reflection, as a generic client sees them"
"$STAGEHAND_PYTHON" tests/it/support/grpc_probe.py "$addr"
echo "== environments, through the stagehand CLI"
"$stagehand" env list
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
"$stagehand" status -o table
"$stagehand" env sync dev --wait -o table
"$stagehand" env history dev -o table
http=$(sed -n 's/^http listening on //p' "$work/serve.out")
echo "== /metrics on $http"
"$STAGEHAND_PYTHON" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
  "http://$http/metrics" | grep '^stagehand_reconcile_passes_total' || true

echo "== a release in dev: shop 1.1.0, committed to the GitOps repository and synced"
sed -i 's/newTag: 1.0.0/newTag: 1.1.0/' "$work/gitops/dev/kustomization.yaml"
git -C "$work/gitops" -c user.name=dev -c user.email=dev@example.test commit -q -am "dev: shop 1.1.0"
release=$(git -C "$work/gitops" rev-parse HEAD)
# A promotion needs its source Healthy at the revision: passes until the stand-in has rolled
# the new Deployments out.
for _ in $(seq 100); do
  "$stagehand" env sync dev --fetch --wait -o json 2>/dev/null | "$STAGEHAND_PYTHON" -c \
    'import json,sys; s=json.load(sys.stdin)["status"]; sys.exit(not (s["appliedRevision"] == sys.argv[1] and s["health"] == "Healthy"))' \
    "$release" && break
  sleep 0.3
done
"$stagehand" status dev -o json | "$STAGEHAND_PYTHON" -c \
  'import json,sys; s=json.load(sys.stdin)["status"]; print("  dev:", s["appliedRevision"][:7], s["health"])'
echo "== stagehand compare dev staging, then stagehand preview --to staging"
"$stagehand" compare dev staging -o table
"$stagehand" preview --to staging -o table

echo "== riley: stagehand promote --to staging; quinn (qa) approves; stagehand watch"
id=$("$stagehand" promote --to staging --reason "shop 1.1.0" -o json | field id)
"$stagehand" promotion "$id" -o table
as "$quinn" approve "$id" --comment "tested in dev" -o table >/dev/null
"$stagehand" watch "$id" -o table
echo "== staging's verification: each check, the value its last run saw"
"$stagehand" promotion "$id" -o json > "$work/staging-promotion.json"
"$STAGEHAND_PYTHON" - "$work/staging-promotion.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
for c in p["verification"]:
    print(f"  {c['name']} ({c['kind']}): {c['status']}, value {c['value']}: {c['message']}")
if p["state"] != "Succeeded" or not p["verification"] or any(c["status"] != "passed" for c in p["verification"]):
    sys.exit(f"staging was not verified: {p['message']}")
PY

echo "== riley: stagehand promote --to prod; quinn and morgan approve; a freeze window holds it"
prod_before=$(applied prod)
id=$("$stagehand" promote --to prod --reason "shop 1.1.0" -o json | field id)
as "$quinn" approve "$id" -o table >/dev/null
as "$morgan" approve "$id" -o table >/dev/null
held_by "$id" freeze
"$stagehand" promotion "$id" -o table
echo "== riley may not override the freeze (exit 27, PERMISSION_DENIED); morgan may"
code=0; "$stagehand" override "$id" --reason "hotfix" >/dev/null || code=$?
[ "$code" = 27 ] || { echo "riley's override exited $code, not 27" >&2; exit 1; }
as "$morgan" override "$id" --reason "release 1.1.0 approved for the freeze" -o table >/dev/null
"$stagehand" watch "$id" -o table

echo "== riley: stagehand rollback prod --to ${prod_before:0:7}: approvals and the freeze again"
id=$("$stagehand" rollback prod --to "$prod_before" --reason "roll back 1.1.0" -o json | field id)
as "$quinn" approve "$id" -o table >/dev/null
as "$morgan" approve "$id" -o table >/dev/null
held_by "$id" freeze
as "$morgan" override "$id" --reason "rollback" -o table >/dev/null
"$stagehand" watch "$id" -o table
"$STAGEHAND_KUBECTL" get deployment web -n shop-prod \
  -o jsonpath='  prod runs {.spec.template.spec.containers[0].image} again{"\n"}'

echo "== who did what: stagehand audit prod (riley's refused override is in it)"
audit=$("$stagehand" audit prod -o table)
echo "$audit"
grep -q "riley .*override_refused" <<<"$audit" || { echo "riley's refused override is not audited" >&2; exit 1; }
echo "== each environment's revision and health"
"$stagehand" status -o table
git -C "$work/gitops" log --oneline -4
echo "== the web view: http://127.0.0.1:$http_port/ui/ (sign in with a token above)"
"$STAGEHAND_KUBECTL" get secret shop-db -n shop-prod -o json > "$work/secret.json"
"$STAGEHAND_PYTHON" - "http://127.0.0.1:$http_port" "$riley" "$work/secret.json" <<'PY'
import base64, json, sys, urllib.parse, urllib.request
base, token, secret_file = sys.argv[1:4]
values = [base64.b64decode(v).decode() for v in json.load(open(secret_file))["data"].values()]
class Keep(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None
opener = urllib.request.build_opener(Keep)
try:
    opener.open(urllib.request.Request(base + "/ui/sign-in", urllib.parse.urlencode({"token": token}).encode()))
    sys.exit("sign-in did not answer with a redirect")
except urllib.error.HTTPError as answer:
    if answer.code != 303:
        sys.exit(f"sign-in answered {answer.code}")
    cookie = answer.headers["Set-Cookie"].split(";")[0]
for path in ["/ui/", "/ui/environments/prod", "/ui/compare?from=staging&to=prod", "/ui/audit", "/ui/delivery"]:
    page = opener.open(urllib.request.Request(base + path, headers={"Cookie": cookie})).read().decode()
    if path == "/ui/":
        missing = [e for e in ("dev", "staging", "prod") if f'data-environment="{e}"' not in page]
        if missing:
            sys.exit(f"the pipeline page lacks {missing}")
    if any(v and v in page for v in values):
        sys.exit(f"{path} shows a value of the Secret shop-db")
    print(f"  {path}: {len(page)} bytes, no Secret value")
PY
cat <<NEXT
== where to look next
  http://127.0.0.1:$http_port/ui/       the web view (sign in with riley's, quinn's or morgan's token)
  stagehand promotions                  every promotion, newest first (STAGEHAND_SERVER=$STAGEHAND_SERVER)
  stagehand promotion ID, watch ID      what one waits for; its stages, live
  stagehand audit                       who requested, approved, overrode, rolled back
  git -C $work/gitops log               the promotion commits and their trailers
  $work/serve.log                       the service's log
NEXT

if $check_only; then
  echo "demo checks passed"
  exit 0
fi
echo "== serving; logs in $work/serve.log; Ctrl-C stops"
wait "$server_pid"
