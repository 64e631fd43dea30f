#!/bin/bash
# PostgreSQL's first start (docker-entrypoint-initdb.d): one role and one database per owner,
# read from the database URLs the services themselves get (compose secrets), so a URL and its
# role can never disagree. Runs only when the data directory is empty.
set -euo pipefail

create_database_from_url() {
    local url rest userinfo role password database
    url=$(cat "${SECRETS_DIR:-/run/secrets}/$1")
    rest=${url#*://}           # role:password@host:port/database
    userinfo=${rest%%@*}
    role=${userinfo%%:*}
    password=${userinfo#*:}
    database=${rest##*/}
    database=${database%%\?*}
    echo "creating role ${role} and database ${database}"
    # psql variables (:"name" / :'value') quote identifiers and literals safely.
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v role="$role" -v password="$password" -v database="$database" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"database" OWNER :"role";
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
SQL
}

create_database_from_url dataset_database_url
create_database_from_url jobs_database_url
create_database_from_url mlflow_backend_store_uri
