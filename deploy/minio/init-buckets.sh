#!/bin/sh
# MinIO's init step (a one-shot mc container): the buckets, and one least-privilege user per
# bucket owner. Idempotent: run again after a rotation to set the users' new secret keys.
#   MINIO_URL                           where MinIO is
#   DATASETS_BUCKET, ARTIFACTS_BUCKET   the Dataset service's bucket and MLflow's artifact bucket
# Secrets (files): minio_root_user, minio_root_password, dataset_s3_access_key/_secret_key,
# mlflow_s3_access_key/_secret_key.
set -eu

secrets_dir=${SECRETS_DIR:-/run/secrets}
secret() {
    cat "$secrets_dir/$1"
}

# policy NAME BUCKET: read/write objects of one bucket, and nothing else.
policy() {
    file=$(mktemp)
    cat > "$file" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::$2"]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                 "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::$2/*"]
    }
  ]
}
JSON
    mc admin policy create modelyard "$1" "$file"
    rm -f "$file"
}

# user ACCESS_KEY SECRET_KEY POLICY
user() {
    mc admin user add modelyard "$1" "$2"
    # Attaching a policy that is already attached is an error to mc: check before attaching.
    if ! mc admin user info modelyard "$1" | grep -q "$3"; then
        mc admin policy attach modelyard "$3" --user "$1"
    fi
}

mc alias set modelyard "$MINIO_URL" "$(secret minio_root_user)" "$(secret minio_root_password)"
mc mb --ignore-existing "modelyard/$DATASETS_BUCKET"
mc mb --ignore-existing "modelyard/$ARTIFACTS_BUCKET"
policy modelyard-datasets-rw "$DATASETS_BUCKET"
policy modelyard-artifacts-rw "$ARTIFACTS_BUCKET"
user "$(secret dataset_s3_access_key)" "$(secret dataset_s3_secret_key)" modelyard-datasets-rw
user "$(secret mlflow_s3_access_key)" "$(secret mlflow_s3_secret_key)" modelyard-artifacts-rw
echo "buckets and users ready"
