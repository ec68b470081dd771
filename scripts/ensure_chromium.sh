#!/usr/bin/env bash
# Make sure Debian's Chromium is there for the browser tests (tests/browser)
# and scripts/make_thumbnails.py; installs it with apt-get where missing
# (scripts/ensure_debian_package.sh), else the browser tests skip saying why.
# Always exits 0, so `make test` goes on either way.
#
# CHROMIUM_PATH may name another Chromium binary; it is then used as is.
set -u
if [ -n "${CHROMIUM_PATH:-}" ] && [ -x "${CHROMIUM_PATH}" ]; then
  echo "ensure_chromium: using CHROMIUM_PATH=${CHROMIUM_PATH}"
  exit 0
fi
exec bash "$(dirname "$0")/ensure_debian_package.sh" ensure_chromium chromium /usr/bin/chromium "the browser tests"
