#!/usr/bin/env bash
# Debian packages memecap uses beside Python: Tesseract with Russian and English data for OCR,
# the DejaVu font (Cyrillic glyphs, for OCR test images and the rendered report), and headless
# Chromium, which the tests render the HTML report with. Installs what is missing with apt-get
# when it can (root, or sudo without a password); otherwise prints the command and carries on:
# memecap itself runs without them; only OCR (model.ocr.enabled, ocr_template) and the tests need them.
#   bash scripts/system_packages.sh        # setup.sh runs it
set -uo pipefail

missing=()
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
if ! command -v tesseract >/dev/null 2>&1 || ! tesseract --list-langs 2>/dev/null | grep -qx rus; then
    missing+=(tesseract-ocr-rus)
fi
if ! command -v tesseract >/dev/null 2>&1 || ! tesseract --list-langs 2>/dev/null | grep -qx eng; then
    missing+=(tesseract-ocr-eng)  # the default engine re-reads English lines with it
fi
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
    echo "system packages: tesseract ($(tesseract --version 2>&1 | head -n1)) with rus and eng, DejaVu font, chromium: present"
    exit 0
fi

command="apt-get install -y ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system packages: no apt-get here; install yourself (Debian names): ${missing[*]}." \
         "memecap runs without them; OCR and some tests do not." >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
else
    echo "system packages: missing ${missing[*]}; run:  sudo $command" >&2
    exit 0
fi
echo "system packages: installing ${missing[*]}"
# A failed install must not stop the Python setup: these serve single features and the tests.
# Package lists can be missing or stale on a fresh machine: refresh them only when needed.
if ! DEBIAN_FRONTEND=noninteractive $sudo $command -qq >/dev/null 2>&1; then
    if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo $command -qq >/dev/null; }; then
        echo "system packages: the install failed; run:  sudo $command" >&2
    fi
fi
exit 0
