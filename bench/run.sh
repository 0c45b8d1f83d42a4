#!/usr/bin/env bash
# make bench [SCENARIO=all|product,list,...] [DURATION=30] [SOAK_SECS=600]
# Installs the load generators when missing (wrk and pgbench from Debian; oha from crates.io only
# for the scenarios that run at a fixed rate), then runs bench/bench.py. Every load targets
# 127.0.0.1 and ends by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-all}
duration=${2:-30}

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v pgbench >/dev/null || [ -x /usr/lib/postgresql/15/bin/pgbench ] || need_apt+=(postgresql-contrib)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "bench: install ${need_apt[*]}" >&2; exit 1
  fi
fi
# Closed-loop scenarios (wrk only) start at once; the others need oha, built once from crates.io.
needs_oha=no
IFS=, read -ra wanted <<< "$scenario"
for s in "${wanted[@]}"; do
  case "$s" in list|checkout|mixed|jobs|scale-out) ;; *) needs_oha=yes ;; esac
done
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$needs_oha" = yes ] && ! command -v oha >/dev/null; then
  echo "bench: installing oha (fixed-rate load generator) from crates.io, once: about 15 minutes on 2 cores" >&2
  started=$(date +%s)
  cargo install oha --locked --quiet
  echo "bench: oha installed in $(( $(date +%s) - started )) s" >&2
fi
export PATH="$HOME/.cargo/bin:$PATH:$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
exec python3 bench/bench.py --scenario "$scenario" --duration "$duration" ${QUICK:+--quick}
