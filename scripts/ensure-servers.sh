#!/usr/bin/env bash
# Makes sure the PostgreSQL and Redis server binaries the tests start are installed.
# Missing: installs them with apt-get on Debian as root, else says in one line what to install.
set -euo pipefail

have_pg() {
  { command -v initdb && command -v pg_ctl; } >/dev/null 2>&1 && return 0
  compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null
}
have_redis() { command -v redis-server >/dev/null 2>&1; }

missing=()
have_pg || missing+=(postgresql)
have_redis || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged services; the tests run their own servers on free ports.
  for svc in postgresql redis-server; do
    (service "$svc" stop || true) >/dev/null 2>&1
  done
  exit 0
fi
echo "missing server binaries: install ${missing[*]} (PostgreSQL 13+ and Redis 6+) and run make test again" >&2
exit 1
