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

# The Debian mirror this machine's own apt sources name (deb822 files, then one-line lists),
# skipping security and third-party archives; the public one if none is named.
debian_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
    /^[[:space:]]*$/ { if (deb && uri != "" && suites !~ /-security/) { print uri; exit } deb=0; uri=""; suites=""; next }
    /^Types:/ && / deb( |$)/ { deb=1 }
    /^URIs:/ && $2 ~ /\/debian\/?$/ { uri=$2 }
    /^Suites:/ { suites=$0 }
    END { if (deb && uri != "" && suites !~ /-security/) print uri }' | head -n1)
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ && $3 !~ /-security/ { print $2; exit }' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1)
  printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}
