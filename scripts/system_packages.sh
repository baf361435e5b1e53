#!/usr/bin/env bash
# Debian packages memecap's tests need beside Python: headless Chromium renders the HTML report
# (tests/test_report.py). Installs what is missing when run as root or with sudo; otherwise it
# prints the command and carries on (everything else works without them).
set -uo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# Cyrillic glyphs for the rendered report
{ command -v fc-list >/dev/null && fc-list | grep -qi dejavu; } || missing+=(fonts-dejavu-core)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else
  echo "memecap: please install the Debian packages: sudo apt-get install -y ${missing[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Package lists can be missing or stale on a fresh machine: refresh only when the install fails.
$SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
  || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${missing[@]}" >/dev/null; } \
  || echo "memecap: could not install ${missing[*]} with apt-get" >&2
