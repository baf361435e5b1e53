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
.venv/bin/python -m pip install -q "torch==2.13.0" "cython==3.3.1"
# With the license an SPDX string, setuptools' only message here is a notice that the install is
# editable; hidden, so what setup prints is ours.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q -e ".[memory,serve,dev]"
# ruCLIP's reference model code, used by the tests to check our ruCLIP loader against it
# numerically. Its own pins (transformers 4.10, torchvision, ...) cannot install on this stack,
# and its model file needs none of them.
.venv/bin/python -m pip install -q --no-deps "ruclip==0.0.2"
# RuDOLPH: the YouTokenToMe BPE it was trained with, its model classes (rudolph), its tokenizer
# wrapper and VQGAN (rudalle) and the VQGAN's blocks (taming-transformers). youtokentome's build
# needs Cython present and visible, hence --no-build-isolation. The other three pin 2021 releases
# (transformers 4.10, huggingface-hub 0.2, opencv 4.5.4.60, torchvision) that cannot install on
# this stack, so they go in with --no-deps; what they do need (einops, omegaconf, PyWavelets) is
# pinned in pyproject.toml and the rest is shimmed in memecap/models/rudolph/compat.py.
.venv/bin/python -m pip install -q --no-build-isolation "youtokentome==1.0.6"
.venv/bin/python -m pip install -q --no-deps "rudolph==0.0.1rc10" "rudalle==1.1.3" "taming-transformers==0.0.1"
# natasha ships navec's Russian news vectors (model.lstm.navec=natasha; MIT), the only file of it
# memecap reads, located without importing natasha. Its declared dependencies (pymorphy2 and its
# dictionaries beside memecap's pymorphy3, slovnet, navec, yargy, ipymarkup, razdel, and docopt,
# which builds from source) serve its NLP pipeline, which memecap never runs: --no-deps.
.venv/bin/python -m pip install -q --no-deps "natasha==1.6.0"
echo "memecap installed in .venv"
