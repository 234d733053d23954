#!/usr/bin/env bash
# Writes the kustomize conformance cases as seeds of the `render` target:
# `run-dir \0 path \0 content \0 …` per case (see fuzz_targets/render.rs).
set -euo pipefail
cases=${1:-/work/shared/conformance/kustomize/cases}
out=${2:-$(dirname "$0")/corpus/render}
mkdir -p "$out"
for case in "$cases"/*/; do
  name=$(basename "$case")
  run_dir=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("run_dir","input"))' "$case/case.json")
  run_dir=${run_dir#input}
  run_dir=${run_dir#/}
  {
    printf '%s\0' "$run_dir"
    (cd "$case/input" && find . -type f | sort | while read -r f; do
      printf '%s\0' "${f#./}"
      cat "$f"
      printf '\0'
    done)
  } > "$out/$name"
done
echo "$(ls "$out" | wc -l) seeds in $out"
