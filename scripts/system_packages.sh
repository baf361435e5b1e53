#!/usr/bin/env bash
# System packages memecap's OCR needs: Tesseract with Russian (and English) data, and the DejaVu
# font the tests draw Cyrillic text with. Installs what is missing with apt-get when it can (root,
# or sudo without a password); otherwise prints the command and carries on: memecap itself runs
# without them, only OCR (model.ocr.enabled, ocr_template) and its tests need them.
#   bash scripts/system_packages.sh        # setup.sh runs it
set -uo pipefail

missing=()
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
if ! command -v tesseract >/dev/null 2>&1 || ! tesseract --list-langs 2>/dev/null | grep -qx rus; then
    missing+=(tesseract-ocr-rus)
fi
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -eq 0 ]; then
    echo "system packages: tesseract ($(tesseract --version 2>&1 | head -n1)) with rus, DejaVu font: present"
    exit 0
fi

command="apt-get install -y --no-install-recommends ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system packages: no apt-get here; install Tesseract with Russian data and DejaVu Sans yourself" \
         "(Debian names: ${missing[*]}). memecap runs without them; OCR does not." >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
else
    echo "system packages: missing ${missing[*]}; to use OCR run:  sudo $command" >&2
    exit 0
fi
echo "system packages: installing ${missing[*]}"
# A failed install must not stop the Python setup: OCR is one feature, the rest works without it.
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo $command -qq; }; then
    echo "system packages: the install failed; to use OCR run:  sudo $command" >&2
fi
exit 0
