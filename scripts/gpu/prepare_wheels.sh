#!/usr/bin/env bash
# Download (or build) the wheels of scripts/gpu/wheels.txt for a GPU machine with Python 3.12 on
# manylinux x86_64 and no network, into scripts/gpu/wheels/ (ignored by git; it travels with the
# working tree), then print each file's size and the total. Needs the package index, here only.
#   bash scripts/gpu/prepare_wheels.sh            # then, on the GPU machine: python3 scripts/gpu/run.py
#   LIMIT_MIB=64 bash scripts/gpu/prepare_wheels.sh   # fail when the set is larger (default 60)
set -euo pipefail
cd "$(dirname "$0")"
OUT=wheels
LIMIT_MIB=${LIMIT_MIB:-60}  # the working tree that travels is limited to 64 MiB; memecap itself is ~1 MiB
PIP=${PIP:-python3 -m pip}
# Every manylinux tag a cp312 x86_64 wheel may carry: pip matches the glibc version exactly.
PLATFORMS=$(for n in 17 24 27 28 31 34 35 39; do printf -- "--platform manylinux_2_%s_x86_64 " "$n"; done)
TARGET="--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none $PLATFORMS --platform manylinux2014_x86_64 --platform any"
rm -rf "$OUT" && mkdir -p "$OUT"
grep -v '^#' wheels.txt | while read -r spec how; do
  [ -n "$spec" ] || continue
  case "$how" in
    binary) $PIP download -q --no-deps --only-binary=:all: $TARGET -d "$OUT" "$spec" ;;
    pure)  # a py3 wheel where the index has one, else one built from the sdist (no compiler needed)
      $PIP download -q --no-deps --only-binary=:all: $TARGET -d "$OUT" "$spec" 2>/dev/null \
        || DS_BUILD_OPS=0 $PIP wheel -q --no-deps --no-binary=:all: -w "$OUT" "$spec" ;;
    build)
      PY312=${PYTHON312:-python3.12}
      if "$PY312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
        # a cp312 wheel built here; its build needs Cython visible
        env="$(mktemp -d)/venv" && "$PY312" -m venv "$env"
        "$env/bin/python" -m pip install -q "cython==3.3.1" setuptools wheel
        "$env/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "$spec"
      else
        echo "no Python 3.12 here (set PYTHON312): $spec travels as its sdist; run.py builds it there (needs Cython)"
        $PIP download -q --no-deps --no-binary=:all: -d "$OUT" "$spec"
      fi ;;
    *) echo "wheels.txt: unknown kind '$how' for $spec" >&2; exit 2 ;;
  esac
done
ls -l "$OUT" | awk 'NR > 1 {printf "%8.2f MiB  %s\n", $5 / 1048576, $9}'
total=$(du -sb "$OUT" | cut -f1)
awk -v t="$total" -v n="$(ls "$OUT" | wc -l)" -v l="$LIMIT_MIB" 'BEGIN {printf "total %.1f MiB in %d files (limit %s MiB)\n", t / 1048576, n, l}'
[ "$total" -le $((LIMIT_MIB * 1048576)) ] || { echo "the wheel set is over ${LIMIT_MIB} MiB" >&2; exit 1; }
