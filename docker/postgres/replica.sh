#!/bin/bash
# The standby: on first start, clone the primary (pg_basebackup -R writes the settings that make
# it follow the primary), then run it as a hot standby.
set -euo pipefail
export PGDATA=/var/lib/postgresql/data
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_basebackup -h postgres -U rampart -D "$PGDATA" -R -X stream -c fast; do
    echo "waiting for the primary"; sleep 2
  done
  chmod 700 "$PGDATA"
fi
exec postgres -c hot_standby=on -c hot_standby_feedback=on
