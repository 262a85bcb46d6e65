#!/bin/bash
# The dashboard's browser test (tests/ui/test_browser.py): Debian's Chromium, driven headless by Selenium
# through Debian's chromedriver (/usr/bin/chromedriver), which is built from the same source package, so
# the two versions always match. No browser is downloaded at test time (CI has no internet).
# Idempotent, non-interactive; runs as root on Debian 12 after `apt-get update`.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
# --no-install-recommends: the recommended extras (chromium-sandbox, upower, ...) are of no use headless;
# fonts-liberation gives the headless browser a font to lay the pages out with.
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver fonts-liberation
chromium --version
/usr/bin/chromedriver --version
