#!/bin/sh
# nats-server with the permission table (nats-server.conf, generated from runtime/nats_access.py).
# Each secret mounted as /run/secrets/MODELYARD_NATS_<ROLE>_PASSWORD becomes the variable the
# configuration reads that user's password from.
set -eu
for file in /run/secrets/MODELYARD_NATS_*_PASSWORD; do
    [ -f "$file" ] || continue
    export "$(basename "$file")=$(cat "$file")"
done
exec nats-server -c /etc/nats/nats-server.conf --jetstream --store_dir /data --http_port 8222
