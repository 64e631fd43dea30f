#!/bin/sh
# The image's entrypoint: turn secret files into environment variables, then run the command.
#
# Every regular file directly in /run/secrets ($SECRETS_DIR when set) whose name is an environment variable name
# (MODELYARD_SERVICE_TOKEN, AWS_SECRET_ACCESS_KEY, ...) becomes that variable, its content the
# value (trailing newlines dropped). docker compose mounts secrets there under the name given by
# `target:`; on Kubernetes the variables come from Secrets directly and nothing is mounted here.
set -eu

secrets_dir=${SECRETS_DIR:-/run/secrets}
if [ -d "$secrets_dir" ]; then
    for file in "$secrets_dir"/*; do
        name=${file##*/}
        case "$name" in
            [!A-Z]* | *[!A-Z0-9_]*) continue ;;
        esac
        [ -f "$file" ] || continue
        value=$(cat "$file")
        export "$name=$value"
    done
fi

exec "$@"
