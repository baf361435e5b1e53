#!/usr/bin/env bash
# Create .venv and install memecap with its test tools. Works offline from the Hub: only the
# package index is used. torch is pinned in pyproject.toml (an unpinned torch pulls a CUDA build).
#   bash scripts/setup.sh            # then: .venv/bin/memecap train demo
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_packages.sh  # Tesseract + Russian data (OCR), DejaVu font, Chromium (report test)
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[memory,dev]"
# ruCLIP's reference model code, used by the tests to check our ruCLIP loader against it
# numerically. Its own pins (transformers 4.10, torchvision, ...) cannot install on this stack,
# and its model file needs none of them.
.venv/bin/python -m pip install -q --no-deps "ruclip==0.0.2"
echo "memecap installed in .venv"
