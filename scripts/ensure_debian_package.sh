#!/usr/bin/env bash
# ensure_debian_package.sh NAME PACKAGE BINARY WHO
#
# Make sure BINARY (an absolute path) is there, installing Debian's PACKAGE
# with apt-get when it is missing and apt can be used (root, or sudo without a
# password); otherwise say why and leave it: WHO (e.g. "the browser tests")
# then skip with that reason. Always exits 0, so `make test` goes on either
# way. NAME prefixes the messages. Used by ensure_chromium.sh and
# ensure_redis.sh.
set -u
name="$1" package="$2" binary="$3" who="$4"

say() { echo "$name: $*"; }

if [ -x "$binary" ]; then
  say "found $binary"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "no $binary and no apt-get here: install $package yourself; $who will skip"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
  SUDO=(sudo -n)
else
  say "no $binary, and apt-get needs root: run 'sudo apt-get install $package'; $who will skip"
  exit 0
fi

say "installing Debian's $package with apt-get (once; about a minute)"
log="$(mktemp -t "ensure-$package.XXXXXX")"
if "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 \
  && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >>"$log" 2>&1 \
  && [ -x "$binary" ]; then
  say "installed $("$binary" --version 2>/dev/null || echo "$package")"
else
  say "apt-get could not install $package (last lines below); $who will skip"
  tail -n 5 "$log" | sed 's/^/  /'
fi
rm -f "$log"
exit 0
