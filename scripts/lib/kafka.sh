# shellcheck shell=bash
# Kafka part of scripts/stack: fetch jars, generate configs, start nodes, query the cluster.
# Sourced by scripts/stack; relies on its configuration variables and helpers.

KAFKA_HEAP="-Xms256m -Xmx512m"
KAFKA_JVM_OPTS=${TALLY_KAFKA_JVM_OPTS:-"-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -Djava.awt.headless=true"}
# CLI tools are short-lived: a small heap, serial GC and the C1 JIT only start fastest.
KAFKA_TOOL_JVM_OPTS="-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true"
KAFKA_TOOL_TIMEOUT=40

# ---------------------------------------------------------------- fetching

# Resolves Kafka + tools + the log4j2 binding with Maven into
# $CACHE_DIR/kafka-<version>/libs. Builds in a temp dir and renames it into place with a
# .complete marker inside, so an interrupted fetch is simply redone.
kafka_ensure_libs() {
	local dest=$CACHE_DIR/kafka-$KAFKA_VERSION tmp
	[[ -f $dest/.complete ]] && return 0
	mkdir -p "$CACHE_DIR"
	exec 7>"$CACHE_DIR/.kafka-fetch.lock"
	flock 7
	if [[ -f $dest/.complete ]]; then # fetched meanwhile by a concurrent run
		exec 7>&-
		return 0
	fi
	log "fetching Kafka $KAFKA_VERSION jars with Maven into $dest"
	rm -rf "$CACHE_DIR/.kafka-$KAFKA_VERSION".* # leftovers of interrupted fetches (we hold the lock)
	tmp=$(mktemp -d "$CACHE_DIR/.kafka-$KAFKA_VERSION.XXXXXX")
	kafka_fetch_pom >"$tmp/pom.xml"
	heartbeat_start "Maven: fetching Kafka $KAFKA_VERSION"
	if ! mvn -q -B -f "$tmp/pom.xml" \
		"org.apache.maven.plugins:maven-dependency-plugin:$MAVEN_DEPENDENCY_PLUGIN_VERSION:copy-dependencies" \
		-DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1; then
		heartbeat_stop
		tail -n 40 "$tmp/mvn.log" >&2
		rm -rf "$tmp"
		die "Maven could not fetch Kafka $KAFKA_VERSION"
	fi
	heartbeat_stop
	[[ -f $tmp/libs/kafka_$KAFKA_SCALA_VERSION-$KAFKA_VERSION.jar && -f $tmp/libs/kafka-tools-$KAFKA_VERSION.jar ]] ||
		die "Kafka jars missing after the Maven fetch (see $tmp/mvn.log)"
	date -u +%FT%TZ >"$tmp/.complete"
	rm -rf "$dest"
	mv "$tmp" "$dest"
	exec 7>&-
}

kafka_fetch_pom() {
	cat <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.tally</groupId>
  <artifactId>kafka-fetch</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$KAFKA_SCALA_VERSION</artifactId>
      <version>$KAFKA_VERSION</version>
      <scope>runtime</scope>
    </dependency>
    <dependency>
      <!-- TopicCommand, TransactionsCommand, ConsumerGroupCommand, ClusterTool, ... -->
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      <scope>runtime</scope>
      <exclusions>
        <!-- only needed by the Connect plugin tool; drags in Jetty, Jersey, ... -->
        <exclusion>
          <groupId>org.apache.kafka</groupId>
          <artifactId>connect-runtime</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
      <scope>runtime</scope>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
      <scope>runtime</scope>
    </dependency>
  </dependencies>
</project>
EOF
}

# ---------------------------------------------------------------- configuration

kafka_bootstrap() {
	local n out=()
	for n in "${KAFKA_NODES[@]}"; do out+=("$(node_host "$n"):$(node_port "$n")"); done
	(
		IFS=,
		echo "${out[*]}"
	)
}

# Bootstrap list for CLI tools: only brokers that run and answer. A paused broker still
# accepts TCP connections (the kernel does that) but never replies, and an admin client
# that bootstraps from it times out instead of trying the others.
kafka_live_bootstrap() {
	local n out=()
	for n in "${KAFKA_NODES[@]}"; do
		[[ $(node_state "$n") == running ]] && port_answers "$(node_port "$n")" && out+=("$(node_host "$n"):$(node_port "$n")")
	done
	((${#out[@]})) || {
		kafka_bootstrap
		return
	}
	(
		IFS=,
		echo "${out[*]}"
	)
}

kafka_quorum_voters() {
	local i out=()
	for i in 1 2 3; do out+=("$i@$(node_host "kafka-$i"):$((KAFKA_CONTROLLER_PORT + i - 1))"); done
	(
		IFS=,
		echo "${out[*]}"
	)
}

# Generates all Kafka config files (cheap, so always: port variables may have changed),
# the cluster id (once) and formats storage of nodes that are not formatted yet.
kafka_prepare() {
	local node
	kafka_write_log4j_configs
	kafka_write_admin_config
	for node in "${KAFKA_NODES[@]}"; do
		mkdir -p "$(node_dir "$node")"
		{
			kafka_server_properties "$node"
			if [[ $SECURE == 1 ]]; then secure_kafka_properties "${node#kafka-}"; fi
		} >"$(node_dir "$node")/server.properties"
	done
	kafka_format_storage
}

kafka_server_properties() {
	local node=$1 id=${1#kafka-} dir host
	dir=$(node_dir "$node")
	host=$(node_host "$node")
	cat <<EOF
# generated by scripts/stack — edits are overwritten
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$(kafka_quorum_voters)
listeners=PLAINTEXT://$host:$((KAFKA_PORT + id - 1)),CONTROLLER://$host:$((KAFKA_CONTROLLER_PORT + id - 1))
advertised.listeners=PLAINTEXT://$host:$((KAFKA_PORT + id - 1))
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data

num.partitions=$PARTITIONS
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=12
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
share.coordinator.state.topic.num.partitions=12
group.initial.rebalance.delay.ms=0
unclean.leader.election.enable=false
auto.create.topics.enable=false

# small machine: few threads, small segments, modest cleaner buffer (it lives on the heap)
num.io.threads=2
num.network.threads=2
num.replica.fetchers=1
num.recovery.threads.per.data.dir=1
background.threads=4
log.segment.bytes=67108864
log.retention.hours=48
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=33554432
EOF
}

# Broker logs go to stdout, which is redirected to kafka-N/server.log.
kafka_write_log4j_configs() {
	cat >"$STACK_DIR/log4j2-kafka.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by scripts/stack -->
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="STDOUT"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.authorizer.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="org.apache.kafka.common.utils.AppInfoParser" level="WARN"/>
  </Loggers>
</Configuration>
EOF
	# CLI tools: errors only, on stderr, so stdout stays parseable.
	cat >"$STACK_DIR/log4j2-tools.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by scripts/stack -->
<Configuration status="ERROR">
  <Appenders>
    <Console name="STDERR" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="ERROR"><AppenderRef ref="STDERR"/></Root>
  </Loggers>
</Configuration>
EOF
}

# Short timeouts so that a status check against a dead or paused broker fails fast.
kafka_write_admin_config() {
	cat >"$STACK_DIR/kafka-admin.properties" <<'EOF'
request.timeout.ms=5000
default.api.timeout.ms=15000
retry.backoff.ms=200
EOF
	if [[ $SECURE == 1 ]]; then secure_kafka_admin_properties >>"$STACK_DIR/kafka-admin.properties"; fi
}

kafka_cluster_id() {
	local file=$STACK_DIR/kafka-cluster-id
	if [[ ! -s $file ]]; then
		kafka_tool kafka.tools.StorageTool random-uuid >"$file.tmp"
		mv "$file.tmp" "$file"
	fi
	cat "$file"
}

kafka_format_storage() {
	local node cid pids=() names=() i failed=0
	for node in "${KAFKA_NODES[@]}"; do
		[[ -f $(node_dir "$node")/data/meta.properties ]] && continue
		[[ -n ${cid:-} ]] || cid=$(kafka_cluster_id)
		log "formatting $node storage (cluster id $cid)"
		local scram=()
		if [[ $SECURE == 1 ]]; then mapfile -t scram < <(secure_format_args); fi
		kafka_tool kafka.tools.StorageTool format -t "$cid" -c "$(node_dir "$node")/server.properties" ${scram[@]+"${scram[@]}"} \
			>"$(node_dir "$node")/format.log" 2>&1 &
		pids+=($!)
		names+=("$node")
	done
	for i in "${!pids[@]}"; do
		if ! wait "${pids[$i]}"; then
			cat "$(node_dir "${names[$i]}")/format.log" >&2
			failed=1
		fi
	done
	((failed == 0)) || die "formatting Kafka storage failed"
}

# ---------------------------------------------------------------- processes

kafka_start_node() {
	local node=$1 dir log
	dir=$(node_dir "$node")
	log=$dir/server.log
	# keep one previous log around, but do not let it grow without bound
	if [[ -f $log ]] && (($(stat -c %s "$log") > 50 * 1024 * 1024)); then mv -f "$log" "$log.1"; fi
	echo "==== $(date -u +%FT%TZ) scripts/stack starting $node" >>"$log"
	# setsid: detach from the caller's process group, so the broker survives
	# Ctrl-C or a test harness killing the group. In a non-interactive shell the
	# subshell is not a group leader, so setsid execs without forking and $! is java's pid.
	# shellcheck disable=SC2086 # the option strings are meant to be split
	# 7>&- 8>&-: the broker must not inherit (and so hold forever) our lock files.
	# In the lab, node_runner puts it in its own network namespace (ip netns exec execs).
	(cd "$dir" && exec setsid nohup $(node_runner "$node") java $KAFKA_HEAP $KAFKA_JVM_OPTS \
		-Dlog4j2.configurationFile="$STACK_DIR/log4j2-kafka.xml" \
		-cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" >>"$log" 2>&1 </dev/null 7>&- 8>&-) &
	echo $! >"$dir/pid"
}

kafka_wait_ports() {
	local timeout=$1 deadline node waiting
	deadline=$((SECONDS + timeout))
	while :; do
		waiting=()
		for node in "${KAFKA_NODES[@]}"; do
			node_started_alive "$node" || {
				log "$node is not running"
				return 1
			}
			port_answers "$(node_port "$node")" || waiting+=("$node")
		done
		((${#waiting[@]} == 0)) && return 0
		if ((SECONDS >= deadline)); then
			log "timed out waiting for ${waiting[*]} to listen"
			return 1
		fi
		sleep 0.5
	done
}

# Runs a Kafka CLI main class (one JVM, ~1-2 s).
kafka_tool() {
	local class=$1
	shift
	# shellcheck disable=SC2086
	timeout "$KAFKA_TOOL_TIMEOUT" java $KAFKA_TOOL_JVM_OPTS \
		-Dlog4j2.configurationFile="$STACK_DIR/log4j2-tools.xml" \
		-cp "$KAFKA_LIBS/*" "$class" "$@"
}

kafka_any_broker_answers() {
	local node
	for node in "${KAFKA_NODES[@]}"; do port_answers "$(node_port "$node")" && return 0; done
	return 1
}

kafka_require_libs() {
	[[ -f $CACHE_DIR/kafka-$KAFKA_VERSION/.complete ]] || die "Kafka jars not fetched yet; run scripts/stack up"
	[[ -f $STACK_DIR/log4j2-tools.xml ]] || die "no stack state in $STACK_DIR; run scripts/stack up"
}

kafka_describe_topics() {
	kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(kafka_live_bootstrap)" \
		--command-config "$STACK_DIR/kafka-admin.properties" --describe "$@"
}

# ---------------------------------------------------------------- topics and status

# Deletes the topics tests (`it.<name>.*`) and benchmarks (`bench-*`) left behind
# whose partition 0 on the first broker's disk was last written more than $1
# minutes ago (0: all of them). A broker's CPU grows with every partition it hosts,
# idle or not: ~1,000 leftover topics made the same consume run 3x slower.
# Prints how many it deleted.
kafka_prune_topics() {
	local minutes=$1 topic dir now names=() regex
	now=$(date +%s)
	dir=$(node_dir "${KAFKA_NODES[0]}")/data
	while IFS= read -r topic; do
		[[ $topic =~ ^(it\.|bench-) ]] || continue
		# Not on this broker's disk (fewer replicas): its age is unknown; keep it.
		if ((minutes > 0)) && { [[ ! -d $dir/$topic-0 ]] ||
			(((now - $(stat -c %Y "$dir/$topic-0")) < minutes * 60)); }; then
			continue
		fi
		names+=("$topic")
	done < <(kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(kafka_live_bootstrap)" \
		--command-config "$STACK_DIR/kafka-admin.properties" --list --exclude-internal)
	if ((${#names[@]})); then
		# TopicCommand takes one topic regex; dots in names are literal.
		regex=$(printf '%s\n' "${names[@]}" | sed 's/[.]/\\./g' | paste -sd'|')
		kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(kafka_live_bootstrap)" \
			--command-config "$STACK_DIR/kafka-admin.properties" --delete --topic "($regex)" >/dev/null
	fi
	echo "${#names[@]}"
}

kafka_create_topics() {
	local topic pids=() failed=0 out
	out=$(mktemp -d)
	for topic in "$@"; do
		log "creating topic $topic ($PARTITIONS partitions, RF 3)"
		kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(kafka_live_bootstrap)" \
			--command-config "$STACK_DIR/kafka-admin.properties" \
			--create --if-not-exists --topic "$topic" --partitions "$PARTITIONS" \
			--replication-factor 3 --config min.insync.replicas=2 >"$out/$topic" 2>&1 &
		pids+=($!)
	done
	for topic in "${!pids[@]}"; do wait "${pids[$topic]}" || failed=1; done
	if ((failed)); then cat "$out"/* >&2; fi
	rm -rf "$out"
	return "$failed"
}

# Kafka section of `status`. Sets KAFKA_BROKERS_REGISTERED and KAFKA_MISSING_TOPICS.
kafka_status_report() {
	local tmp ok=0 topic regex
	KAFKA_BROKERS_REGISTERED=0
	KAFKA_MISSING_TOPICS=
	echo "kafka:"
	if [[ ! -f $CACHE_DIR/kafka-$KAFKA_VERSION/.complete || ! -f $STACK_DIR/log4j2-tools.xml ]]; then
		echo "  not set up (run scripts/stack up)"
		return 1
	fi
	if ! kafka_any_broker_answers; then
		echo "  no broker answers"
		return 1
	fi
	tmp=$(mktemp -d)
	regex=$(printf '%s|' "${APP_TOPICS[@]}" | sed 's/\./\\./g; s/|$//')
	# The two JVMs run in parallel: each costs 1-2 s of mostly CPU-bound startup.
	local bootstrap p1 p2 describe_rc=0
	bootstrap=$(kafka_live_bootstrap)
	kafka_tool org.apache.kafka.tools.ClusterTool list-endpoints --bootstrap-server "$bootstrap" \
		--command-config "$STACK_DIR/kafka-admin.properties" >"$tmp/endpoints" 2>"$tmp/endpoints.err" &
	p1=$!
	kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" \
		--command-config "$STACK_DIR/kafka-admin.properties" --describe --if-exists --topic "$regex" \
		>"$tmp/topics" 2>"$tmp/topics.err" &
	p2=$!
	wait "$p1" || true
	wait "$p2" || describe_rc=$?

	# list-endpoints prints a header and one line per live (unfenced) broker
	KAFKA_BROKERS_REGISTERED=$(awk 'NR > 1 && $1 ~ /^[0-9]+$/ { n++ } END { print n + 0 }' "$tmp/endpoints")
	if ((KAFKA_BROKERS_REGISTERED == 3)); then
		echo "  brokers: 3/3 registered"
	else
		local err
		err=$(kafka_first_error "$tmp/endpoints" "$tmp/endpoints.err")
		echo "  brokers: $KAFKA_BROKERS_REGISTERED/3 registered${err:+ ($err)}"
		ok=1
	fi
	if ((describe_rc != 0)); then
		# TopicCommand prints its errors on stdout
		echo "  topics: describe failed: $(kafka_first_error "$tmp/topics" "$tmp/topics.err")"
		ok=1
	else
		for topic in "${APP_TOPICS[@]}"; do
			if ! kafka_topic_summary "$topic" "$tmp/topics"; then
				ok=1
				awk -F'\t' -v t="Topic: $topic" '$1 == t { f = 1 } END { exit !f }' "$tmp/topics" ||
					KAFKA_MISSING_TOPICS+="$topic "
			fi
		done
	fi
	rm -rf "$tmp"
	return "$ok"
}

kafka_first_error() {
	cat "$@" 2>/dev/null | grep -m1 -iE 'error|exception' | cut -c1-200 || true
}

# One line per topic from TopicCommand --describe output; fails unless the topic exists
# and every partition has a leader and 3 in-sync replicas.
kafka_topic_summary() {
	local topic=$1 file=$2
	awk -F'\t' -v topic="$topic" -v want="$PARTITIONS" '
		function field(name,   i) {
			for (i = 1; i <= NF; i++) if (index($i, name ": ") == 1 || $i == name ":") return substr($i, length(name) + 3)
			return ""
		}
		{ sub(/^[ \t]+/, "") }
		field("Topic") != topic { next }
		field("PartitionCount") != "" { count = field("PartitionCount"); exists = 1; next }
		field("Partition") != "" {
			parts++
			isr = field("Isr"); n = (isr == "") ? 0 : split(isr, a, ",")
			if (n < 3) under++
			if (min == "" || n < min) min = n
			if (field("Leader") == "none" || field("Leader") == "-1") leaderless++
		}
		END {
			if (!exists) { printf "  topic %-20s MISSING\n", topic; exit 1 }
			printf "  topic %-20s %d partitions, ISR min %d/3", topic, count, min
			if (under) printf ", %d under-replicated", under
			if (leaderless) printf ", %d without leader", leaderless
			if (count != want) printf " (note: TALLY_PARTITIONS=%d)", want
			printf "\n"
			exit (under || leaderless || parts != count) ? 1 : 0
		}' "$file"
}

# ---------------------------------------------------------------- leader / coordinator

kafka_node_name() {
	[[ $1 =~ ^[123]$ ]] || return 1
	echo "kafka-$1"
}

kafka_leader() {
	local topic=$1 partition=$2 out leader
	kafka_require_libs
	out=$(kafka_describe_topics --topic "$(printf '%s' "$topic" | sed 's/\./\\./g')" 2>&1) ||
		die "cannot describe topic $topic: $(echo "$out" | grep -m1 -iE 'error|exception')"
	leader=$(echo "$out" | awk -F'\t' -v topic="$topic" -v p="$partition" '
		{ sub(/^[ \t]+/, ""); t = ""; q = ""; l = "" }
		{ for (i = 1; i <= NF; i++) {
			if (index($i, "Topic: ") == 1) t = substr($i, 8)
			if (index($i, "Partition: ") == 1) q = substr($i, 12)
			if (index($i, "Leader: ") == 1) l = substr($i, 9) } }
		t == topic && q == p { print l; exit }')
	[[ -n $leader ]] || die "topic $topic has no partition $partition"
	kafka_node_name "$leader" || die "$topic-$partition has no leader (leader: $leader)"
}

# Java's String.hashCode (for BMP characters), as Kafka uses it to map ids to partitions.
java_string_hash() {
	local s=$1 h=0 i c
	for ((i = 0; i < ${#s}; i++)); do
		printf -v c '%d' "'${s:i:1}"
		h=$(((h * 31 + c) & 0xFFFFFFFF))
	done
	((h < 2147483648)) || h=$((h - 4294967296))
	echo "$h"
}

# Kafka's Utils.abs(hash) % partitions.
kafka_partition_for() {
	local h
	h=$(java_string_hash "$1")
	if ((h == -2147483648)); then h=0; elif ((h < 0)); then h=$((-h)); fi
	echo $((h % $2))
}

# Asks the cluster (TransactionsCommand / ConsumerGroupCommand). If the id is unknown to
# the cluster, falls back to the leader of the internal topic partition the id hashes to,
# which is where the coordinator would be.
kafka_coordinator() {
	local kind=$1 id=$2 out id_num internal nparts
	kafka_require_libs
	if [[ $kind == txn ]]; then
		internal=__transaction_state
		nparts=12
		out=$(kafka_tool org.apache.kafka.tools.TransactionsCommand --bootstrap-server "$(kafka_live_bootstrap)" \
			--command-config "$STACK_DIR/kafka-admin.properties" describe --transactional-id "$id" 2>&1) || true
		id_num=$(echo "$out" | awk -F'\t' '
			NR == 1 { for (i = 1; i <= NF; i++) if ($i ~ /^ *CoordinatorId *$/) col = i; next }
			col && NR == 2 { gsub(/ /, "", $col); print $col }')
	else
		internal=__consumer_offsets
		nparts=12
		out=$(kafka_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server "$(kafka_live_bootstrap)" \
			--command-config "$STACK_DIR/kafka-admin.properties" --describe --group "$id" --state 2>&1) || true
		# header: GROUP COORDINATOR (ID) ASSIGNMENT-STRATEGY STATE #MEMBERS; the id is in parentheses
		id_num=$(echo "$out" | awk '/COORDINATOR \(ID\)/ { getline; if (match($0, /\([0-9]+\)/)) print substr($0, RSTART + 1, RLENGTH - 2); exit }')
	fi
	if kafka_node_name "${id_num:-x}" 2>/dev/null; then return 0; fi
	log "stack: the cluster does not know $kind '$id' ($(echo "$out" | grep -m1 -iE 'error|exception|not' | cut -c1-160))"
	local p
	p=$(kafka_partition_for "$id" "$nparts")
	log "stack: falling back to the leader of $internal-$p, where its coordinator would be"
	kafka_leader "$internal" "$p" || die "cannot tell the $kind coordinator for '$id'"
}
