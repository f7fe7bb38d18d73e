#!/bin/bash
# Run once by the postgres image on a fresh data directory: the replication
# user pitr streams as, and the pg_hba.conf line that lets it in.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -v pw="$REPLICATION_PASSWORD" --username "$POSTGRES_USER" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'pw';
SQL
echo "host replication replicator all scram-sha-256" >>"$PGDATA/pg_hba.conf"
