#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: redis-server
# (the tests start their own standalone server and a 3-node cluster from it)
# and postgresql (internal/pgtest starts throwaway servers from its binaries
# for examples/pgcache).
# Only installs when something is missing and we are root; otherwise it says
# what to install and lets the tests fail with the same hint.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# Debian keeps the PostgreSQL server binaries off PATH, in
# /usr/lib/postgresql/NN/bin; internal/pgtest looks there first, then on PATH.
if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null && ! command -v postgres >/dev/null 2>&1; then
  missing+=(postgresql)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing: ${missing[*]} — install with: sudo apt-get install -y ${missing[*]}" >&2
  exit 0
fi
echo "installing ${missing[*]} with apt-get ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged service where it can; the tests start their own
# servers on free ports and need none running.
echo "installed: ${missing[*]}" >&2
