# shellcheck shell=bash
# Prometheus for the Prometheus tests (tests/tests/prometheus.rs) and promtool for
# scripts/validate-deploy: the Debian package `prometheus`, installed with apt-get
# only if missing. Idempotent; sourced by scripts/test and scripts/validate-deploy.
# The package's own service does not matter (no init system starts it here): the
# tests start their own prometheus on a free port with a temporary data dir.
# To run the tests by hand:
#   source scripts/lib/prometheus.sh && prometheus_setup && cargo test -p tally-tests --test prometheus
#
# prometheus_setup exports, on success:
#   TALLY_PROMETHEUS             the prometheus executable
#   TALLY_PROMTOOL               the promtool executable
#   TALLY_PROMETHEUS_REQUIRED=1  the tests fail instead of skipping without it
# and, only when the package cannot be installed at all,
# TALLY_PROMETHEUS_SKIP=<reason> (returns 1; the tests then skip with that reason).

prometheus_setup() {
	if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
		echo "== installing Debian package prometheus (Prometheus tests, promtool)"
		if [ "$(id -u)" = 0 ]; then
			# Stale lists can name versions the mirror no longer has. The package
			# tries to start its daemon; without an init system that fails
			# harmlessly.
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 ||
				{ apt-get update -qq >/dev/null 2>&1 &&
					DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; } ||
				true
		fi
		if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
			export TALLY_PROMETHEUS_SKIP="Debian package prometheus could not be installed (needs root and apt)"
			echo "prometheus: $TALLY_PROMETHEUS_SKIP" >&2
			return 1
		fi
	fi
	TALLY_PROMETHEUS="$(command -v prometheus)"
	TALLY_PROMTOOL="$(command -v promtool)"
	export TALLY_PROMETHEUS TALLY_PROMTOOL
	export TALLY_PROMETHEUS_REQUIRED=1
}
