#!/usr/bin/env bash
# Make sure Debian's Chromium is there for the browser tests (tests/browser)
# and scripts/make_thumbnails.py. Installs it with apt-get when it is missing
# and apt can be used (root, or sudo without a password); otherwise says why
# and leaves it: the browser tests then skip with that reason. Always exits 0,
# so `make test` goes on either way.
#
# CHROMIUM_PATH may name another Chromium binary; it is then used as is.
set -u

say() { echo "ensure_chromium: $*"; }

if [ -n "${CHROMIUM_PATH:-}" ] && [ -x "${CHROMIUM_PATH}" ]; then
  say "using CHROMIUM_PATH=${CHROMIUM_PATH}"
  exit 0
fi
if [ -x /usr/bin/chromium ]; then
  say "found /usr/bin/chromium"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "no /usr/bin/chromium and no apt-get here: install Chromium yourself (or set CHROMIUM_PATH); the browser tests will skip"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
  SUDO=(sudo -n)
else
  say "no /usr/bin/chromium, and apt-get needs root: run 'sudo apt-get install chromium'; the browser tests will skip"
  exit 0
fi

say "installing Debian's chromium with apt-get (once; about a minute)"
log="$(mktemp -t ensure-chromium.XXXXXX)"
if "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 \
  && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >>"$log" 2>&1 \
  && [ -x /usr/bin/chromium ]; then
  say "installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
else
  say "apt-get could not install chromium (last lines below); the browser tests will skip"
  tail -n 5 "$log" | sed 's/^/  /'
fi
rm -f "$log"
exit 0
