#!/bin/sh
# The MLflow tracking server of a deployment: basic auth, a SQL backend store shared by tracking
# and the auth tables, artifacts proxied to the object store (clients never get its credentials).
#
# MLflow reads its options from the environment (the secret ones exported from /run/secrets by
# modelyard-entrypoint, which runs first):
#   MLFLOW_BACKEND_STORE_URI        secret: postgresql://mlflow:<password>@postgres:5432/mlflow
#   MLFLOW_AUTH_ADMIN_PASSWORD      secret: the admin's password, set when the auth tables are
#                                   first created (later changes go through MLflow's API)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  secret: signs the UI's CSRF tokens; same on every replica
#   MLFLOW_ARTIFACTS_DESTINATION    s3://<bucket>, with AWS_* credentials (secrets) and
#                                   MLFLOW_S3_ENDPOINT_URL for MinIO
#   MLFLOW_SERVER_ALLOWED_HOSTS     Host headers accepted, e.g. mlflow,mlflow:5000
#   MLFLOW_AUTH_CACHE_TTL_SECONDS   how long a verified password is cached (default 60): without
#                                   it every request pays a password hash (0.15-0.3 s here)
# A user sees only what it was granted or made (default_permission = NO_PERMISSIONS): the Trainer's
# own user, made by the mlflow-setup step, reads and writes its experiment and models alone.
# Only the auth configuration file has to be written: it has no environment variable for its
# database. It goes to a private temporary directory, never to the image.
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?must be set (a secret)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?must be set (a secret)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?must be set (a secret)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?must be set, e.g. s3://mlflow-artifacts}"

# configparser reads '%' as interpolation: double it.
ini_value() {
    printf '%s' "$1" | sed 's/%/%%/g'
}

umask 077
config_dir=$(mktemp -d)
cat > "$config_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = $(ini_value "$MLFLOW_BACKEND_STORE_URI")
admin_username = $(ini_value "${MLFLOW_AUTH_ADMIN_USERNAME:-admin}")
admin_password = $(ini_value "$MLFLOW_AUTH_ADMIN_PASSWORD")
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}
INI
export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"
export MLFLOW_SERVE_ARTIFACTS=true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

exec mlflow server \
    --app-name basic-auth \
    --host 0.0.0.0 \
    --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-2}" \
    "$@"
