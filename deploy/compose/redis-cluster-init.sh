#!/bin/sh
# Forms the Redis Cluster once (3 masters + 3 replicas); a no-op when it exists.
# With REDIS_SECURE set (compose.secure.yaml): over TLS as the ACL user admin.
set -eu
if [ -n "${REDIS_SECURE:-}" ]; then
  cli() { redis-cli --tls --cacert /secrets/ca.pem --user admin --pass "$(cat /secrets/redis-admin.password)" --no-auth-warning "$@"; }
else
  cli() { redis-cli "$@"; }
fi
if cli -h redis-1 cluster info | grep -q '^cluster_state:ok'; then
  echo "cluster already formed"
  exit 0
fi
nodes=""
for h in redis-1 redis-2 redis-3 redis-4 redis-5 redis-6; do
  ip=$(getent hosts "$h" | awk '{print $1}')
  nodes="$nodes $ip:6379"
done
# shellcheck disable=SC2086 # one word per node
cli --cluster create $nodes --cluster-replicas 1 --cluster-yes
