# shellcheck shell=bash
# The secure variant of scripts/stack (`scripts/stack --secure ...`): TLS everywhere,
# every client authenticated, every tally service on its own least-privilege user.
# Sourced by scripts/stack; relies on its configuration variables and helpers.
#
#   Kafka   CLIENT listener SASL_SSL (SCRAM-SHA-512), also between brokers as `admin`;
#           CONTROLLER listener SSL with client certificates (the node certificate,
#           principal User:CN=tally-stack-node). StandardAuthorizer, nothing allowed
#           without an ACL. Users: admin (super user: the operator, tests, `tally`
#           tools), tally-producer, tally-counter, tally-aggregator — the three with
#           PREFIXED ACLs on tally's default names (secure_kafka_acls), so a
#           deployment whose names extend them (client_message.blue) is covered too.
#   Redis   TLS only (port 0, tls-port; replication and cluster bus over TLS too).
#           ACL users: default off, admin (all), replicator (replication only), tally
#           (keys tally*, only the commands tally sends, below).
#
# Everything lives in $STACK_DIR/secure/, made once by secure_init: a throwaway CA,
# one node certificate (SAN 127.0.0.1, localhost), random passwords, and a tally
# config per principal: tally.toml (admin), tally-producer.toml, tally-counter.toml,
# tally-aggregator.toml. `scripts/stack --secure env` points tests and tools at them.

SECURE_NODE_CN=tally-stack-node
SECURE_USERS=(admin tally-producer tally-counter tally-aggregator)

# Commands the Redis user `tally` may run: what the services, the `tally` tools and
# tally's Lua scripts send (a script's commands are checked against the caller's
# ACL too). Anything else is refused with NOPERM and shows in `ACL LOG`.
SECURE_REDIS_COMMANDS=(
	# connection and cluster topology
	ping hello auth client\|setname readonly readwrite asking
	cluster\|slots cluster\|shards cluster\|nodes cluster\|myid info
	# scripts, and the replication check after every write; time: the producer
	# registry script stamps heartbeats with the server's clock
	eval evalsha script\|load script\|exists wait time
	# reads (counts, ownership, the stash, the producer registry, tally top)
	get mget exists type ttl pttl hget hmget hgetall hlen scan
	xrange xrevrange xlen xinfo\|stream zrange zrangebyscore zscore zcard smembers scard
	# writes (counts and the stash are written by tally's scripts only)
	set del unlink incrby hset hincrby hdel expire pexpire xadd xtrim xdel zadd zrem sadd srem
)

secure_dir() { echo "$STACK_DIR/secure"; }

secure_password() { cat "$(secure_dir)/$1.password"; }

# Makes, in DIR: a CA (ca.pem, ca.key) and one node certificate for CN
# $SECURE_NODE_CN with the subjectAltName SANS (node.crt, node.key in PKCS#8 as
# Kafka's PEM key store reads it, node.pem = key + certificate for Kafka), and a
# random password per user (<user>.password). Also used by
# deploy/compose/secure-setup.sh.
secure_make_pki() {
	local dir=$1 sans=$2 user
	(
		cd "$dir"
		openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=tally CA (throwaway)" \
			-keyout ca.key -out ca.pem 2>/dev/null
		openssl req -newkey rsa:2048 -nodes -subj "/CN=$SECURE_NODE_CN" \
			-keyout node.key.pkcs1 -out node.csr 2>/dev/null
		openssl pkcs8 -topk8 -nocrypt -in node.key.pkcs1 -out node.key
		printf '%s\n' "subjectAltName=$sans" "extendedKeyUsage=serverAuth,clientAuth" >node.ext
		openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
			-extfile node.ext -out node.crt 2>/dev/null
		cat node.key node.crt >node.pem
		rm -f node.csr node.key.pkcs1 node.ext ca.srl
		for user in "${SECURE_USERS[@]}" redis-admin redis-replicator redis-tally; do
			openssl rand -hex 24 >"$user.password"
		done
	)
}

# CA, node certificate and passwords, once (kept across down/up; gone with --wipe).
secure_init() {
	local dir
	dir=$(secure_dir)
	[[ -f $dir/.complete ]] && return 0
	command -v openssl >/dev/null || apt_install openssl
	log "making a throwaway CA, node certificate and passwords in $dir"
	rm -rf "$dir"
	mkdir -p "$dir"
	chmod 700 "$dir"
	secure_make_pki "$dir" "IP:127.0.0.1,DNS:localhost"
	chmod 600 "$dir"/*
	touch "$dir/.complete"
}

# ---------------------------------------------------------------- Kafka

# Lines appended to a broker's server.properties (they override the plain ones).
secure_kafka_properties() {
	local id=$1 dir
	dir=$(secure_dir)
	cat <<EOF

# ---- secure stack (scripts/lib/secure.sh)
listeners=CLIENT://127.0.0.1:$((KAFKA_PORT + id - 1)),CONTROLLER://127.0.0.1:$((KAFKA_CONTROLLER_PORT + id - 1))
advertised.listeners=CLIENT://127.0.0.1:$((KAFKA_PORT + id - 1))
inter.broker.listener.name=CLIENT
listener.security.protocol.map=CLIENT:SASL_SSL,CONTROLLER:SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(secure_password admin)";
ssl.keystore.type=PEM
ssl.keystore.location=$dir/node.pem
ssl.truststore.type=PEM
ssl.truststore.location=$dir/ca.pem
listener.name.controller.ssl.client.auth=required
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:CN=$SECURE_NODE_CN
EOF
}

# `kafka-storage format` arguments that create the SCRAM users with the metadata.
secure_format_args() {
	local user
	for user in "${SECURE_USERS[@]}"; do
		printf '%s\n' --add-scram "SCRAM-SHA-512=[name=$user,password=$(secure_password "$user")]"
	done
}

# The admin client config of the Kafka tools (status, topics, prune, ACLs).
secure_kafka_admin_properties() {
	cat <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(secure_password admin)";
ssl.truststore.type=PEM
ssl.truststore.location=$(secure_dir)/ca.pem
EOF
}

# The least-privilege ACLs, as `kafka-acls --add` arguments, one line per call
# (principal first), all on name prefixes: a principal reaches the names that start
# with tally's default ones and nothing else. The producer cannot write
# message_aggregation*, the aggregator cannot write client_message*. The table in
# docs/security.md and deploy/k8s/strimzi/users.yaml say the same.
SECURE_KAFKA_ACLS=(
	"tally-producer --operation Write --operation Describe --topic client_message"
	"tally-counter --operation Read --operation Describe --topic client_message --group tally-counter"
	"tally-counter --operation Write --operation Describe --topic message_aggregation --topic tally.dlq"
	"tally-counter --operation Write --operation Describe --transactional-id tally-counter"
	"tally-aggregator --operation Read --operation Describe --topic message_aggregation --group tally-aggregator"
	"tally-aggregator --operation Write --operation Describe --topic tally.dlq"
)

secure_kafka_acls() {
	local pids=() failed=0 p line user args
	log "granting the services' Kafka ACLs"
	for line in "${SECURE_KAFKA_ACLS[@]}"; do
		read -r user args <<<"$line"
		# shellcheck disable=SC2086 # args is a word list by design
		kafka_tool org.apache.kafka.tools.AclCommand --bootstrap-server "$(kafka_live_bootstrap)" \
			--command-config "$STACK_DIR/kafka-admin.properties" --add --force \
			--allow-principal "User:$user" --resource-pattern-type prefixed $args >/dev/null &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || failed=1; done
	((failed == 0)) || die "granting Kafka ACLs failed"
}

# ---------------------------------------------------------------- Redis

# Lines appended to a node's redis.conf (a later directive overrides an earlier one).
secure_redis_conf() {
	local node=$1 dir
	dir=$(secure_dir)
	cat <<EOF

# ---- secure stack (scripts/lib/secure.sh): TLS only, ACL users
port 0
tls-port $(node_port "$node")
tls-cert-file $dir/node.crt
tls-key-file $dir/node.key
tls-ca-cert-file $dir/ca.pem
tls-auth-clients optional
tls-replication yes
tls-cluster yes
aclfile $(node_dir "$node")/users.acl
masteruser replicator
masterauth $(secure_password redis-replicator)
EOF
}

# The Redis ACL file for the passwords in DIR (default: this stack's).
secure_redis_acl() {
	local dir=${1:-$(secure_dir)} c allowed=""
	for c in "${SECURE_REDIS_COMMANDS[@]}"; do allowed+=" +$c"; done
	cat <<EOF
user default off
user admin on >$(cat "$dir/redis-admin.password") ~* &* +@all
user replicator on >$(cat "$dir/redis-replicator.password") -@all +psync +replconf +ping
user tally on >$(cat "$dir/redis-tally.password") ~tally* resetchannels -@all$allowed
EOF
}

# A running node reads its ACL file again (up after the users changed).
secure_redis_reload_acls() {
	local node
	for node in "${REDIS_NODES[@]}"; do
		node_pid "$node" >/dev/null || continue
		[[ $(rcli "$(node_port "$node")" acl load 2>&1) == OK ]] || die "ACL LOAD failed on $node"
	done
}

secure_redis_prepare() {
	local node
	for node in "${REDIS_NODES[@]}"; do
		secure_redis_acl >"$(node_dir "$node")/users.acl"
		chmod 600 "$(node_dir "$node")/users.acl"
	done
}

# redis-cli arguments that reach a secure node as admin.
secure_rcli_args() {
	printf '%s\n' --tls --cacert "$(secure_dir)/ca.pem" --user admin --pass "$(secure_password redis-admin)" --no-auth-warning
}

# ---------------------------------------------------------------- tally configs

# A tally config for one Kafka principal (admin for tools and tests).
secure_tally_config() {
	local kafka_user=$1 redis_user=$2 dir n nodes=() brokers=()
	dir=$(secure_dir)
	for n in "${REDIS_NODES[@]}"; do nodes+=("\"rediss://127.0.0.1:$(node_port "$n")\""); done
	for n in "${KAFKA_NODES[@]}"; do brokers+=("127.0.0.1:$(node_port "$n")"); done
	cat <<EOF
# generated by scripts/stack --secure for Kafka user $kafka_user, Redis user $redis_user
[redis]
nodes = [$(
		IFS=,
		echo "${nodes[*]}"
	)]
username = "$redis_user"
password_file = "$dir/redis-$redis_user.password"
tls_ca_file = "$dir/ca.pem"
wait_replicas = 1
wait_timeout_ms = 1000

[kafka]
brokers = "$(
		IFS=,
		echo "${brokers[*]}"
	)"
partitions = $PARTITIONS
replication_factor = 3
min_insync_replicas = 2

security_protocol = "sasl_ssl"
ssl_ca_file = "$dir/ca.pem"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "$kafka_user"
sasl_password_file = "$dir/$kafka_user.password"

[log]
format = "auto"
filter = "info"
EOF
}

secure_write_tally_configs() {
	local dir user
	dir=$(secure_dir)
	secure_tally_config admin admin >"$dir/tally.toml"
	for user in tally-producer tally-counter tally-aggregator; do
		secure_tally_config "$user" tally >"$dir/$user.toml"
	done
	chmod 600 "$dir"/*.toml
}
