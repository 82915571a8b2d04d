# shellcheck shell=bash
# The network lab of scripts/stack (--lab): every Kafka node, every Redis node and
# every tally service in its own network namespace, all on one Linux bridge, so that
# a fault can cut one host off from *some* others while it keeps talking to the rest.
# Sourced by scripts/stack; relies on its configuration variables and helpers.
#
# Layout (docs/faults.md, "The network lab"):
# - namespace tally-lab-hub holds the bridge br0 and the nftables table that makes
#   the faults; the host's own namespace gets no lab address and no route to one;
# - every lab host (ctl, kafka-N, redis-PORT, producer-N, counter-N, aggregator-N,
#   proxy) is a namespace tally-lab-<host> with one veth (eth0) into the bridge and
#   one address from 198.18.0.0/24 (RFC 2544's benchmarking range, never routed);
# - ctl is the operator's host: scripts/stack itself, the tests, `tally mtc` and
#   `tally verify` run there (scripts/stack re-executes itself in it).
#
# Faults are drops in the bridge (the "network"), never in a host: neither end of a
# cut link is told anything, its packets just vanish, as with a failed switch port.

LAB_PREFIX=tally-lab
LAB_NET=198.18.0
LAB_TABLE=tally_lab
# The service hosts the tests place processes on (tests/src/chaos.rs).
LAB_SERVICE_HOSTS=(producer-1 producer-2 producer-3 counter-1 counter-2 counter-3 aggregator-1 aggregator-2 proxy)

lab_ns() { echo "$LAB_PREFIX-$1"; }

# The address of a lab host; fails for a name that is not one.
lab_addr() {
	local h=$1 n
	case $h in
	ctl) echo "$LAB_NET.2" ;;
	kafka-[1-3]) echo "$LAB_NET.$((10 + ${h#kafka-}))" ;;
	redis-*)
		n=${h#redis-}
		[[ $n =~ ^[0-9]+$ ]] && ((n >= REDIS_PORT && n < REDIS_PORT + 6)) || return 1
		echo "$LAB_NET.$((21 + n - REDIS_PORT))"
		;;
	producer-[1-3]) echo "$LAB_NET.$((30 + ${h#producer-}))" ;;
	counter-[1-3]) echo "$LAB_NET.$((40 + ${h#counter-}))" ;;
	aggregator-[1-2]) echo "$LAB_NET.$((50 + ${h#aggregator-}))" ;;
	proxy) echo "$LAB_NET.60" ;;
	*) return 1 ;;
	esac
}

lab_hosts() {
	echo ctl
	printf '%s\n' "${KAFKA_NODES[@]}" "${REDIS_NODES[@]}" "${LAB_SERVICE_HOSTS[@]}"
}

# The namespace this shell runs in, by name ("" for the host's own).
lab_current_ns() {
	ip netns identify $$ 2>/dev/null || true
}

lab_net_exists() {
	[[ -e /run/netns/$(lab_ns hub) ]]
}

# Creates the hub, the bridge, the fault table and every host; idempotent (a host
# that exists is kept as it is).
lab_net_up() {
	local hub h ns addr created=0
	command -v ip >/dev/null || apt_install iproute2
	command -v nft >/dev/null || apt_install nftables
	((EUID == 0)) || die "the lab needs root (network namespaces, veth pairs, a bridge)"
	hub=$(lab_ns hub)
	if ! lab_net_exists; then
		ip netns add "$hub"
		ip -n "$hub" link set lo up
		ip -n "$hub" link add br0 type bridge
		ip -n "$hub" link set br0 up
		ip netns exec "$hub" nft -f - <<EOF
table bridge $LAB_TABLE {
	# pairs (from . to) whose frames the bridge drops: partitions, cuts, isolations
	set cut { type ipv4_addr . ipv4_addr; }
	chain links {
		type filter hook forward priority 0; policy accept;
		ip saddr . ip daddr @cut drop
		jump lossy
	}
	# one rule per lossy pair: a random share of its frames dropped
	chain lossy {
	}
}
EOF
		created=1
	fi
	while read -r h; do
		ns=$(lab_ns "$h")
		[[ -e /run/netns/$ns ]] && continue
		addr=$(lab_addr "$h")
		ip netns add "$ns"
		ip -n "$ns" link set lo up
		ip -n "$hub" link add "h-$h" type veth peer name eth0 netns "$ns"
		ip -n "$hub" link set "h-$h" master br0 up
		ip -n "$ns" addr add "$addr/24" dev eth0
		ip -n "$ns" link set eth0 up
		created=1
	done < <(lab_hosts)
	((created == 0)) || log "lab network up: $(lab_hosts | wc -l) hosts on $LAB_NET.0/24 (bridge in $(lab_ns hub))"
}

# Deletes every lab namespace (their veths and the bridge go with them).
lab_net_down() {
	local ns
	for ns in $(ip netns list 2>/dev/null | awk -v p="$LAB_PREFIX-" 'index($1, p) == 1 { print $1 }'); do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
		ip netns del "$ns"
	done
	log "lab network down"
}

# Expands a host group to host names: a host, kafka (every broker), redis (every
# Redis node), services (every service host), all, or a comma-separated list of these.
lab_expand() {
	local part
	local -a parts
	IFS=, read -ra parts <<<"$1"
	for part in "${parts[@]}"; do
		case $part in
		kafka) printf '%s\n' "${KAFKA_NODES[@]}" ;;
		redis) printf '%s\n' "${REDIS_NODES[@]}" ;;
		services) printf '%s\n' "${LAB_SERVICE_HOSTS[@]}" ;;
		all) lab_hosts ;;
		*) lab_addr "$part" >/dev/null || die "unknown lab host '$part' (scripts/stack --lab hosts)"
			echo "$part" ;;
		esac
	done
}

lab_nft() {
	ip netns exec "$(lab_ns hub)" nft "$@"
}

# Adds (from . to) pairs to the cut set: every host of FROM to every host of TO,
# and back unless ONE_WAY.
lab_cut_pairs() {
	local from=$1 to=$2 one_way=$3 a b elems=()
	while read -r a; do
		while read -r b; do
			[[ $a == "$b" ]] && continue
			elems+=("$(lab_addr "$a") . $(lab_addr "$b")")
			[[ $one_way == yes ]] || elems+=("$(lab_addr "$b") . $(lab_addr "$a")")
		done < <(lab_expand "$to")
	done < <(lab_expand "$from")
	((${#elems[@]})) || die "no pair of distinct hosts between '$from' and '$to'"
	local IFS=,
	lab_nft add element bridge "$LAB_TABLE" cut "{ ${elems[*]} }"
}

cmd_lab() {
	local cmd=$1
	shift
	case $cmd in
	hosts)
		local h
		while read -r h; do printf '%s %s %s\n' "$h" "$(lab_ns "$h")" "$(lab_addr "$h")"; done < <(lab_hosts)
		return 0
		;;
	esac
	lab_net_exists || die "the lab network is not up; run scripts/stack --lab up"
	case $cmd in
	partition)
		[[ $# -eq 2 ]] || usage_error "usage: partition A B"
		lab_cut_pairs "$1" "$2" no
		log "partitioned $1 | $2"
		;;
	cut)
		[[ $# -eq 2 ]] || usage_error "usage: cut FROM TO"
		lab_cut_pairs "$1" "$2" yes
		log "cut $1 -> $2"
		;;
	isolate)
		[[ $# -eq 1 ]] || usage_error "usage: isolate HOST"
		lab_cut_pairs "$1" all no
		log "isolated $1"
		;;
	lossy)
		[[ $# -eq 3 && $3 =~ ^[0-9]+$ && $3 -le 100 ]] || usage_error "usage: lossy A B PERCENT"
		local a b
		while read -r a; do
			while read -r b; do
				[[ $a == "$b" ]] && continue
				lab_nft add rule bridge "$LAB_TABLE" lossy ip saddr "$(lab_addr "$a")" ip daddr "$(lab_addr "$b")" numgen random mod 100 "<" "$3" drop
				lab_nft add rule bridge "$LAB_TABLE" lossy ip saddr "$(lab_addr "$b")" ip daddr "$(lab_addr "$a")" numgen random mod 100 "<" "$3" drop
			done < <(lab_expand "$2")
		done < <(lab_expand "$1")
		log "lossy $1 | $2: $3 % of packets dropped"
		;;
	slow)
		[[ $# -eq 4 && $3 =~ ^[0-9]+$ && $4 =~ ^[0-9]+$ ]] || usage_error "usage: slow FROM TO LATENCY_MS JITTER_MS"
		lab_slow "$@"
		;;
	heal)
		[[ $# -eq 0 ]] || usage_error "heal takes no arguments"
		lab_nft flush set bridge "$LAB_TABLE" cut
		lab_nft flush chain bridge "$LAB_TABLE" lossy
		lab_slow_heal
		log "healed every link"
		;;
	faults)
		lab_nft list table bridge "$LAB_TABLE"
		;;
	exec)
		[[ $# -ge 2 ]] || usage_error "usage: exec HOST COMMAND [ARGS]"
		lab_addr "$1" >/dev/null || die "unknown lab host '$1' (scripts/stack --lab hosts)"
		local ns
		ns=$(lab_ns "$1")
		shift
		exec ip netns exec "$ns" "$@"
		;;
	esac
}

# ---------------------------------------------------------------- slow links

LAB_SLOW_TABLE=tally_lab_slow
LAB_PROXY_FIRST_PORT=20000

lab_proxy_pid_file() { echo "$STACK_DIR/lab-proxy.pid"; }
lab_slow_hosts_file() { echo "$STACK_DIR/lab-slow-hosts"; }

# slow FROM TO LATENCY JITTER: FROM's TCP connections to the nodes of TO go through
# a delaying proxy on the proxy host (scripts/lib/lab-proxy.py), steered there by a
# DNAT rule in each FROM host. NAT applies to new connections only, so FROM's open
# connections to TO are reset (ss -K) and its clients reconnect through the proxy.
lab_slow() {
	local from=$1 to=$2 latency=$3 jitter=$4 a b port lp=$LAB_PROXY_FIRST_PORT maps=() rules=()
	[[ ! -s $(lab_proxy_pid_file) ]] || die "a slow link is in place already; heal first"
	local proxy
	proxy=$(lab_addr proxy)
	while read -r b; do
		case $b in kafka-* | redis-*) ;; *) die "slow: $b is not a Kafka or Redis node" ;; esac
		port=$(node_port "$b")
		maps+=("$proxy:$lp=$(lab_addr "$b"):$port")
		rules+=("ip daddr $(lab_addr "$b") tcp dport $port dnat to $proxy:$lp")
		lp=$((lp + 1))
	done < <(lab_expand "$to")
	ip netns exec "$(lab_ns proxy)" setsid python3 "$LIB_DIR/lab-proxy.py" --latency-ms "$latency" \
		--jitter-ms "$jitter" "${maps[@]}" </dev/null >>"$STACK_DIR/lab-proxy.log" 2>&1 7>&- 8>&- &
	echo $! >"$(lab_proxy_pid_file)"
	local deadline=$((SECONDS + 10))
	until ip netns exec "$(lab_ns ctl)" timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$proxy" "$LAB_PROXY_FIRST_PORT" 2>/dev/null; do
		((SECONDS < deadline)) || die "the lab proxy did not start (see $STACK_DIR/lab-proxy.log)"
		sleep 0.1
	done
	while read -r a; do
		{
			echo "table ip $LAB_SLOW_TABLE {"
			echo "  chain out { type nat hook output priority -100; policy accept;"
			printf '    %s\n' "${rules[@]}"
			echo "  }"
			echo "}"
		} | ip netns exec "$(lab_ns "$a")" nft -f -
		echo "$a" >>"$(lab_slow_hosts_file)"
		while read -r b; do
			ip netns exec "$(lab_ns "$a")" ss -K dst "$(lab_addr "$b")" dport = "$(node_port "$b")" >/dev/null 2>&1 || true
		done < <(lab_expand "$to")
	done < <(lab_expand "$from")
	log "slow $from -> $to: $latency ms + up to $jitter ms each way"
}

# Every slow link undone: the NAT rules deleted (connections through the proxy
# break when it stops, and their clients reconnect straight).
lab_slow_heal() {
	local h pid
	if [[ -f $(lab_slow_hosts_file) ]]; then
		while read -r h; do
			ip netns exec "$(lab_ns "$h")" nft delete table ip "$LAB_SLOW_TABLE" 2>/dev/null || true
		done <"$(lab_slow_hosts_file)"
		rm -f "$(lab_slow_hosts_file)"
	fi
	if [[ -s $(lab_proxy_pid_file) ]]; then
		pid=$(<"$(lab_proxy_pid_file)")
		[[ $pid =~ ^[0-9]+$ ]] && kill "$pid" 2>/dev/null || true
		rm -f "$(lab_proxy_pid_file)"
	fi
}
