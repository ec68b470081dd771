#!/usr/bin/env bash
# Make sure Debian's redis-server is there for the cluster tests
# (tests/integration/test_cluster.py) and `make cluster`; installs it with
# apt-get where missing (scripts/ensure_debian_package.sh). The tests start
# their own redis-server (free port, temporary folder); the package's system
# service is neither needed nor touched. Always exits 0.
set -u
if command -v redis-server >/dev/null 2>&1; then
  echo "ensure_redis: found $(command -v redis-server)"
  exit 0
fi
exec bash "$(dirname "$0")/ensure_debian_package.sh" ensure_redis redis-server /usr/bin/redis-server "the cluster tests"
