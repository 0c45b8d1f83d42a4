#!/usr/bin/env bash
# Makes sure the server binaries the tests start (PostgreSQL, Redis, nginx) and the tools the
# documentation's examples use (curl, jq, openssl) are installed.
# Missing: installs them with apt-get on Debian as root, else says in one line what to install.
set -euo pipefail

have_pg() {
  { command -v initdb && command -v pg_ctl; } >/dev/null 2>&1 && return 0
  compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null
}
have_redis() { command -v redis-server >/dev/null 2>&1; }
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
have_pg || missing+=(postgresql)
have_redis || missing+=(redis-server)
have nginx || missing+=(nginx-light)
for tool in curl jq openssl; do have "$tool" || missing+=("$tool"); done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged services; the tests run their own servers on free ports.
  for svc in postgresql redis-server nginx; do
    (service "$svc" stop || true) >/dev/null 2>&1
  done
  exit 0
fi
echo "missing server binaries: install ${missing[*]} (PostgreSQL 13+, Redis 6+, nginx) and run make test again" >&2
exit 1
