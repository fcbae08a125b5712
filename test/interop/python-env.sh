#!/usr/bin/env bash
# Creates (once) the Python environment the interop tests run in: a venv in a cache folder
# outside the checkout, keyed by the hash of requirements.txt, so CI builds it once per pin set.
# Prints the venv's python path on stdout. Usage: bash test/interop/python-env.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
req="$here/requirements.txt"
key="$(sha256sum "$req" | cut -c1-16)"
cache="${V4TUNE_PY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/v4tune}"
venv="$cache/venv-$key"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv.partial"
  mkdir -p "$cache"
  python3 -m venv "$venv.partial" >&2
  # the index here is a local wheel store: a registry that cannot answer is not retried
  "$venv.partial/bin/pip" install --quiet --retries 0 -r "$req" >&2
  touch "$venv.partial/.complete"
  rm -rf "$venv"
  mv "$venv.partial" "$venv"
  # a venv's scripts name their folder: rebuild the entry points' shebangs under the final name
  sed -i "1s|$venv.partial|$venv|" "$venv"/bin/* 2>/dev/null || true
fi
echo "$venv/bin/python"
