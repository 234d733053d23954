#!/usr/bin/env bash
# Builds Stagehand's image from a binary cargo built, without a registry: the Dockerfile's
# `prebuilt` target on a Debian base made here.
#
#   scripts/image.sh BINARY [TAG]   the image TAG (default stagehand:dev) with BINARY in it
#   scripts/image.sh --base         only the base image
#
# The base (stagehand-base:bookworm) is a `debootstrap --variant=minbase` bookworm with git,
# openssh-client and CA certificates from this machine's Debian mirror, imported with
# `docker import`. Its root file system is cached as a tarball under ~/.cache/stagehand, so
# debootstrap runs once per machine (or CI cache) and a new Docker engine only re-imports it.
# Idempotent: an existing base is reused, and the image build is cached by the engine.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
log() { printf '[image] %s\n' "$*" >&2; }

base_tag=stagehand-base:bookworm
# Bump when the package list or the clean-up changes, so that caches are rebuilt.
base_version=1
base_packages=git,openssh-client,ca-certificates
base_tarball="$stagehand_cache/stagehand-base-bookworm-v$base_version.tar.gz"

# Temporary directories, removed however the script ends.
scratch=$(mktemp -d -t stagehand-image.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

command -v docker >/dev/null 2>&1 || { echo "docker is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "the Docker engine does not answer (docker info failed)" >&2; exit 1; }

make_tarball() {
  command -v debootstrap >/dev/null 2>&1 || { echo "debootstrap not found: run scripts/setup.sh" >&2; exit 1; }
  local root=$scratch/base mirror
  mirror=$(debian_mirror)
  log "debootstrap bookworm ($base_packages) from $mirror (a few minutes, once)"
  debootstrap --variant=minbase --include="$base_packages" bookworm "$root/fs" "$mirror" \
      >"$scratch/debootstrap.log" 2>&1 || { tail -n 30 "$scratch/debootstrap.log" >&2; exit 1; }
  # What a running container never reads: package caches and lists, logs, documentation and
  # man pages (the packages' copyright files stay).
  rm -rf "$root/fs/var/cache/apt/archives/"*.deb "$root/fs/var/lib/apt/lists/"* \
         "$root/fs/usr/share/man/"* "$root/fs/usr/share/info/"* "$root/fs/var/log/"*
  find "$root/fs/usr/share/doc" -mindepth 1 \( -type f -o -type l \) ! -name copyright -delete
  find "$root/fs/usr/share/doc" -mindepth 1 -type d -empty -delete
  mkdir -p "$stagehand_cache"
  tar --numeric-owner -C "$root/fs" -czf "$base_tarball.tmp" .
  mv "$base_tarball.tmp" "$base_tarball"
  rm -rf "$root"
  log "base root file system cached at $base_tarball"
}

ensure_base() {
  if docker image inspect "$base_tag" >/dev/null 2>&1 \
     && [ "$(docker image inspect -f '{{ index .Config.Labels "stagehand.base-version" }}' "$base_tag")" = "$base_version" ]; then
    return 0
  fi
  [ -f "$base_tarball" ] || make_tarball
  log "importing $base_tarball as $base_tag"
  docker import --change "LABEL stagehand.base-version=$base_version" \
    --change 'CMD ["/bin/bash"]' "$base_tarball" "$base_tag" >/dev/null
}

case "${1:-}" in
  --base) ensure_base; exit 0 ;;
  ""|-*) echo "usage: $0 BINARY [TAG] | --base" >&2; exit 2 ;;
esac
binary=$1
tag=${2:-stagehand:dev}
[ -x "$binary" ] || { echo "$binary is not an executable file" >&2; exit 1; }
ensure_base

# The build context is the binary alone: a copy without debug information (a debug build's is
# most of its size; the image never reads it).
context=$scratch/context
mkdir "$context"
objcopy --strip-debug "$binary" "$context/stagehand"
log "building $tag from $binary"
# The classic builder is the one every engine has; the Dockerfile orders its stages for it.
DOCKER_BUILDKIT=0 docker build -q --target prebuilt --build-arg "RUNTIME_BASE=$base_tag" \
  -f "$here/../Dockerfile" -t "$tag" "$context" >/dev/null 2>"$scratch/build.log" \
  || { cat "$scratch/build.log" >&2; exit 1; }
echo "$tag"
