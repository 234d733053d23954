# Shared by the scripts in this folder: where the tool cache lives and how its tools are found.
# Sourced, never run.

# The cache of tools that scripts/setup.sh installs or builds (a venv, the kube-apiserver, env.sh).
stagehand_cache="${STAGEHAND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stagehand}"

# Loads the tool locations setup.sh wrote (STAGEHAND_SOPS, STAGEHAND_KUBE_APISERVER, ...).
# Variables the caller already set win over the cached ones, so one tool can be swapped by hand.
load_tools() {
  local saved
  saved=$(export -p | grep -E '^declare -x STAGEHAND_[A-Z_]+=' || true)
  # shellcheck disable=SC1091
  [ -f "$stagehand_cache/env.sh" ] && . "$stagehand_cache/env.sh"
  eval "$saved"
}
