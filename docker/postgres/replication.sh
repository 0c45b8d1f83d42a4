#!/bin/bash
# Runs once, when the primary's data directory is created: lets the replica stream WAL with the
# same (password-checked) user.
set -e
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
