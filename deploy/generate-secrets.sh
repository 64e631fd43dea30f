#!/bin/sh
# Create the deployment's secrets, one file each, in DIR (default: deploy/secrets).
#
#   deploy/generate-secrets.sh                  # for docker compose
#   deploy/generate-secrets.sh deploy/k8s/secrets  # for kustomize's secretGenerator
#
# A file that exists is never overwritten: PostgreSQL roles, MinIO users and the MLflow admin
# were created with those values, so rotation is a deliberate step (docs/operations.md).
# POSTGRES_HOST (default postgres) is the host written into the database URLs.
set -eu

dir=${1:-$(dirname "$0")/secrets}
postgres_host=${POSTGRES_HOST:-postgres}

random() {
    # 32 letters and digits: safe in URLs, ini files and shell, and long enough for MLflow.
    LC_ALL=C tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 32
}

put() {
    # put NAME VALUE: write the secret unless it exists. No trailing newline: Kubernetes'
    # secretGenerator keeps a file's bytes as they are, and a URL ending in a newline breaks.
    if [ ! -s "$dir/$1" ]; then
        printf '%s' "$2" > "$dir/$1"
        echo "created $dir/$1"
    fi
}

database_url() {
    # database_url ROLE DATABASE
    echo "postgresql://$1:$(random)@$postgres_host:5432/$2"
}

# The files are read by the containers' own users (bind mounts keep the host's modes), so they
# are readable; the directory is private to its owner, which keeps other host users out.
mkdir -p "$dir"
chmod 700 "$dir"
umask 022

put postgres_password "$(random)"
put dataset_database_url "$(database_url dataset modelyard_dataset)"
put jobs_database_url "$(database_url jobs modelyard_jobs)"
put mlflow_backend_store_uri "$(database_url mlflow mlflow)"
put minio_root_user modelyard-root
put minio_root_password "$(random)"
put dataset_s3_access_key modelyard-dataset
put dataset_s3_secret_key "$(random)"
put mlflow_s3_access_key modelyard-mlflow
put mlflow_s3_secret_key "$(random)"
put mlflow_admin_password "$(random)"
put mlflow_trainer_password "$(random)"
put mlflow_flask_secret_key "$(random)"
put service_token "$(random)"
put gateway_api_tokens "$(random)"
put nats_admin_password "$(random)"
put nats_jobs_password "$(random)"
put nats_trainer_password "$(random)"
