# shellcheck shell=bash
# Progress for long steps, so that no script goes quiet for minutes (issue #15):
#
#   heartbeat_start LABEL … heartbeat_stop
#       while a step that prints nothing runs (a Maven fetch, apt-get), a line
#       "   ... LABEL: M:SS" on stderr at least every $TALLY_HEARTBEAT_SECS (10)
#       seconds.
#   cargo_progress build ARGS…
#       cargo with its own progress: on a terminal cargo's progress bar; otherwise
#       (CI, piped or logged output) cargo's "Compiling …" lines plus, at least
#       every $TALLY_HEARTBEAT_SECS seconds, one line with the elapsed time, the number of
#       crates started and the one started last (a long C build such as
#       librdkafka's would otherwise show no line for minutes).
#
# Sourced by scripts/demo, scripts/test, scripts/bench, scripts/chaos, scripts/stack.

HEARTBEAT_PID=

# heartbeat_start LABEL [FILE]: with FILE (cargo's stderr being written), the line
# also names the crate cargo started last.
heartbeat_start() {
	heartbeat_stop
	local label=$1 file=${2:-} every=${TALLY_HEARTBEAT_SECS:-10} parent=$$
	(
		# Hold no lock (scripts/stack's fds 7 and 8) and, in sleep, no pipe of the
		# caller's output: a killed heartbeat must not delay either.
		exec 7>&- 8>&-
		trap - EXIT
		local start now last
		printf -v start '%(%s)T' -1
		last=$start
		# A one-second tick against the clock, and the line due a little early:
		# on a loaded machine a plain `sleep 10` between lines drifted to 19 s.
		while sleep 1 </dev/null >/dev/null 2>&1; do
			# The script died without stopping us (set -e): stop too.
			kill -0 "$parent" 2>/dev/null || exit 0
			printf -v now '%(%s)T' -1
			((now - last >= every - 2)) || continue
			last=$now
			local extra=
			if [[ -n $file && -f $file ]]; then
				local started latest
				started=$(grep -c '^ *Compiling ' "$file" || true)
				latest=$(grep '^ *Compiling ' "$file" | tail -n 1 | sed 's/^ *Compiling //') || true
				extra=", $started crates started${latest:+, the latest: $latest}"
			fi
			printf '   ... %s: %d:%02d%s\n' "$label" $(((now - start) / 60)) $(((now - start) % 60)) "$extra" >&2
		done
	) &
	HEARTBEAT_PID=$!
}

heartbeat_stop() {
	[[ -n ${HEARTBEAT_PID:-} ]] || return 0
	kill "$HEARTBEAT_PID" 2>/dev/null || true
	wait "$HEARTBEAT_PID" 2>/dev/null || true
	HEARTBEAT_PID=
}

# cargo_progress SUBCOMMAND ARGS…: cargo SUBCOMMAND ARGS with visible progress
# (see the top of this file). Exit code: cargo's.
cargo_progress() {
	if [[ -t 2 ]]; then
		cargo "$@"
		return
	fi
	local - err rc=0
	set -o pipefail
	err=$(mktemp)
	heartbeat_start "cargo $1" "$err"
	# stderr (where cargo prints) through tee into the file the heartbeat reads;
	# stdout stays stdout.
	{ cargo "$@" 2>&1 1>&3 3>&- | tee -a "$err" >&2; } 3>&1 || rc=$?
	heartbeat_stop
	rm -f "$err"
	return "$rc"
}
