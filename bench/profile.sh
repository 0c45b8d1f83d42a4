#!/usr/bin/env bash
# make profile [SCENARIO=product|mixed|checkout|connections|guardians|jobs] [DURATION=20]
# Runs one benchmark scenario with perf sampling the whole machine (cpu-clock: no hardware
# counters needed) and writes the service's flame graph (inferno, built once from crates.io) into
# the run's folder under bench/results/, beside the text reports.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-product}
duration=${2:-20}
case "$scenario" in
  product|mixed|checkout|connections|guardians|jobs) ;;
  *) echo "profile: $scenario is not profiled; choose product, mixed, checkout, connections, guardians or jobs" >&2; exit 2 ;;
esac
if ! command -v perf >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
  else
    echo "profile: install perf (Debian: linux-perf)" >&2; exit 1
  fi
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v inferno-flamegraph >/dev/null; then
  echo "profile: installing inferno (flame graphs) from crates.io, once: about 90 s on 2 cores" >&2
  started=$(date +%s)
  cargo install inferno --locked --quiet
  echo "profile: inferno installed in $(( $(date +%s) - started )) s" >&2
fi
PROFILE=1 exec bash bench/run.sh "$scenario" "$duration"
