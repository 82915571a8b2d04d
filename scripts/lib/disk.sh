# shellcheck shell=bash
# Full disks for scripts/stack: a node's write-ahead directory (a Redis node's AOF
# directory, a broker's log directory) moved onto a small tmpfs of its own, which
# can then be filled to the last byte and freed again. Sourced by scripts/stack;
# relies on its configuration variables and helpers. Root only (mount, nsenter).
#
# Mount namespaces: the tmpfs is mounted in the mount namespace this script runs
# in (in the lab, `ip netns exec` gives every command one of its own), and the node
# is started again from there, so it sees the small disk. A keeper process (`sleep`)
# stays in that namespace: it keeps the tmpfs alive whatever the node does, and
# every later disk command acts inside it (nsenter), wherever it runs from.
# `disk-restore` (and `down`) copy the data back to the real disk and drop the
# tmpfs, so nothing is lost and a later `up` finds the node's data where it was.

# The directory a node writes its log of changes to.
disk_dir() {
	case $1 in
	redis-*) echo "$(node_dir "$1")/appendonlydir" ;; # Redis 7's appenddirname
	kafka-*) echo "$(node_dir "$1")/data" ;;
	esac
}

disk_keeper_file() { echo "$(node_dir "$1")/disk-keeper.pid"; }

# The keeper's pid while NODE is on a small disk.
disk_keeper() {
	local file pid
	file=$(disk_keeper_file "$1")
	[[ -r $file ]] || return 1
	pid=$(<"$file")
	[[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "^sleep infinity" || return 1
	echo "$pid"
}

# Runs a command in the mount namespace of NODE's small disk.
disk_in() {
	local node=$1 keeper
	shift
	keeper=$(disk_keeper "$node") || die "$node is not on a small disk; run disk-limit $node MIB first"
	nsenter -t "$keeper" -m -- "$@"
}

disk_usage() {
	disk_in "$1" df -h --output=used,avail "$(disk_dir "$1")" | awk 'NR == 2 { print $1 " used, " $2 " free" }'
}

cmd_disk_limit() {
	[[ $# -eq 2 && $2 =~ ^[1-9][0-9]*$ ]] || usage_error "usage: disk-limit NODE MIB"
	require_node "$1"
	local node=$1 mib=$2 dir tmp running=0
	((EUID == 0)) || die "disk-limit needs root (mount)"
	dir=$(disk_dir "$node")
	[[ -d $dir ]] || die "$node has no $dir yet; start the stack first"
	! disk_keeper "$node" >/dev/null || die "$node is on a small disk already"
	lock_state_dir
	if node_pid "$node" >/dev/null; then
		running=1
		stop_nodes "$node"
	fi
	tmp=$(mktemp -d "$STACK_DIR/.disk-move.XXXXXX")
	cp -a "$dir/." "$tmp/"
	local size=$(($(du -sm "$tmp" | cut -f1) + mib))
	mount -t tmpfs -o "size=${size}m,mode=755" "tally-disk-$node" "$dir"
	if ! cp -a "$tmp/." "$dir/"; then
		umount "$dir"
		rm -rf "$tmp"
		die "$node's data does not fit in $size MiB"
	fi
	rm -rf "$tmp"
	# 7>&- 8>&-: the keeper must not hold our lock files.
	setsid sleep infinity </dev/null >/dev/null 2>&1 7>&- 8>&- &
	echo $! >"$(disk_keeper_file "$node")"
	if ((running)); then disk_start_again "$node"; fi
	log "$node writes $dir on a disk of its own with $mib MiB free ($(disk_usage "$node"))"
}

disk_start_again() {
	local node=$1 deadline=$((SECONDS + STACK_TIMEOUT))
	start_node "$node"
	until port_answers "$(node_port "$node")"; do
		if ((SECONDS >= deadline)) || ! node_started_alive "$node"; then
			print_log_tail "$node" 30
			die "$node did not start again"
		fi
		sleep 0.2
	done
}

cmd_disk_fill() {
	[[ $# -eq 1 ]] || usage_error "usage: disk-fill NODE"
	require_node "$1"
	# fallocate takes the free blocks at once; dd takes whatever rounding left.
	disk_in "$1" sh -c '
		f=$1/.tally-disk-filler
		avail=$(df -B1 --output=avail "$1" | tail -n 1)
		size=$(stat -c %s "$f" 2>/dev/null || echo 0)
		[ "$avail" -gt 0 ] && fallocate -l $((size + avail)) "$f" 2>/dev/null
		dd if=/dev/zero of="$f" bs=4096 oflag=append conv=notrunc status=none 2>/dev/null
		true' _ "$(disk_dir "$1")"
	log "$1's disk is full ($(disk_usage "$1"))"
}

cmd_disk_free() {
	[[ $# -eq 1 ]] || usage_error "usage: disk-free NODE"
	require_node "$1"
	disk_in "$1" rm -f "$(disk_dir "$1")/.tally-disk-filler"
	log "$1's disk has room again ($(disk_usage "$1"))"
}

cmd_disk_restore() {
	[[ $# -eq 1 ]] || usage_error "usage: disk-restore NODE"
	require_node "$1"
	lock_state_dir
	local running=0
	if node_pid "$1" >/dev/null; then
		running=1
		stop_nodes "$1"
	fi
	disk_restore "$1" || die "$1 is not on a small disk"
	if ((running)); then disk_start_again "$1"; fi
	log "$1 writes $(disk_dir "$1") on the real disk again"
}

# With NODE stopped: its small disk's data copied back to the real disk, the
# keeper gone, the tmpfs unmounted here too.
disk_restore() {
	local node=$1 dir back keeper
	keeper=$(disk_keeper "$node") || return 1
	dir=$(disk_dir "$node")
	back=$(node_dir "$node")/.disk-back
	rm -rf "$back"
	mkdir -p "$back"
	nsenter -t "$keeper" -m -- sh -c 'rm -f "$1/.tally-disk-filler" && cp -a "$1/." "$2/"' _ "$dir" "$back"
	kill "$keeper" 2>/dev/null || true
	rm -f "$(disk_keeper_file "$node")"
	if mountpoint -q "$dir"; then umount "$dir"; fi
	find "$dir" -mindepth 1 -delete
	cp -a "$back/." "$dir/"
	rm -rf "$back"
}

# After the nodes stopped: every small disk restored.
disk_restore_all() {
	local node
	for node in "${ALL_NODES[@]}"; do
		if disk_restore "$node"; then log "$node: small disk removed, data back on the real disk"; fi
	done
}
