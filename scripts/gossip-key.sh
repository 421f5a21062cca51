#!/bin/sh
# Creates the gossip encryption key that compose.yaml, the swarm stack and the Kubernetes
# manifests read as a secret: deploy/secrets/gossip.key, 32 random bytes in base64 (what
# `shoal keygen` and `serf keygen` print). Idempotent: an existing key is kept, since every
# member must share it (rotate a running cluster with `shoal keys`). Prints the file's path.
#
#   scripts/gossip-key.sh && docker compose up -d --scale web=5
#
# The folder is 0700, so the host's other users cannot read the key; the file itself is 0444,
# because compose bind-mounts it into containers that run as `nobody`.
set -eu
dir=$(cd "$(dirname "$0")/.." && pwd)/deploy/secrets
file=$dir/gossip.key
umask 077
mkdir -p "$dir"
chmod 700 "$dir"
if [ ! -s "$file" ]; then
    tmp=$(mktemp "$dir/.gossip.key.XXXXXX")
    trap 'rm -f "$tmp"' EXIT
    head -c 32 /dev/urandom | base64 > "$tmp"
    chmod 444 "$tmp"
    # `ln` does not replace an existing file: of two concurrent runs, the first key stays.
    ln "$tmp" "$file" 2>/dev/null || [ -s "$file" ]
fi
echo "$file"
