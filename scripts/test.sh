#!/usr/bin/env bash
# Sets up everything the tests need (scripts/setup.sh) and runs every check and test:
# formatting, clippy, then the whole test suite against one shared local kube-apiserver, one
# throwaway PostgreSQL server and one throwaway container registry.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh >/dev/null
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
load_tools

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

# One apiserver for the whole run: nextest runs every test in its own process. The watchdog
# stops it when this script ends, however it ends.
cluster_dir=$(mktemp -d -t stagehand-test-cluster.XXXXXX)
postgres_dir=$(mktemp -d -t stagehand-test-postgres.XXXXXX)
registry_dir=$(mktemp -d -t stagehand-test-registry.XXXXXX)
trap 'scripts/local-cluster.sh down "$cluster_dir"; scripts/postgres.sh down "$postgres_dir"; scripts/registry.sh down "$registry_dir"; rm -rf "$cluster_dir" "$postgres_dir" "$registry_dir"' EXIT
echo "== starting a local kube-apiserver"
export STAGEHAND_TEST_KUBECONFIG
STAGEHAND_TEST_KUBECONFIG=$(scripts/local-cluster.sh up "$cluster_dir" --watch $$)
# The store's tests run on PostgreSQL too; each creates a database of its own on this server.
echo "== starting a throwaway PostgreSQL server"
export STAGEHAND_TEST_DATABASE_URL
STAGEHAND_TEST_DATABASE_URL=$(scripts/postgres.sh up "$postgres_dir" --watch $$)
# The image tests push into one registry (htpasswd auth), each under repositories of its own.
echo "== starting a throwaway container registry"
export STAGEHAND_TEST_REGISTRY
STAGEHAND_TEST_REGISTRY=$(scripts/registry.sh up "$registry_dir" --watch $$)

# The image the container tests run (tests/it/image.rs), from the binary the tests use.
if docker info >/dev/null 2>&1; then
  echo "== building the image from target/debug/stagehand (scripts/image.sh)"
  cargo build --quiet --bin stagehand
  export STAGEHAND_TEST_IMAGE
  STAGEHAND_TEST_IMAGE=$(scripts/image.sh target/debug/stagehand stagehand:test)
else
  echo "== no Docker engine answers: the image tests will fail and say so"
fi

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi

echo "== the README's main command, in check mode"
scripts/demo.sh --check
