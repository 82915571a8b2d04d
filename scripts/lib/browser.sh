# shellcheck shell=bash
# Headless browser for the dashboard test (tests/tests/dashboard.rs): Debian
# `chromium` (apt-get) driven by `playwright-core` from npm, installed once into
# ~/.cache/tally/node (TALLY_CACHE_DIR moves ~/.cache/tally), never into the
# repository. Idempotent; sourced by scripts/test. To run the test by hand:
#   source scripts/lib/browser.sh && browser_setup && cargo test -p tally-tests --test dashboard
#
# browser_setup exports, on success:
#   TALLY_CHROMIUM          the browser executable (/usr/bin/chromium)
#   TALLY_NODE_MODULES      a node_modules holding playwright-core
#   TALLY_BROWSER_REQUIRED=1   the test fails instead of skipping if they are unusable
# and, only when chromium cannot be installed at all, TALLY_BROWSER_SKIP=<reason>
# (the test then skips with that reason).

PLAYWRIGHT_CORE_VERSION=1.65.1

browser_setup() {
	local cache node_dir stamp
	cache="${TALLY_CACHE_DIR:-$HOME/.cache/tally}"
	node_dir="$cache/node"
	if ! command -v chromium >/dev/null 2>&1; then
		echo "== installing Debian package chromium (dashboard test)"
		if [ "$(id -u)" = 0 ]; then
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 ||
				{ apt-get update -qq >/dev/null 2>&1 &&
					DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } ||
				true
		fi
		if ! command -v chromium >/dev/null 2>&1; then
			export TALLY_BROWSER_SKIP="Debian package chromium could not be installed (needs root and apt)"
			echo "browser: $TALLY_BROWSER_SKIP; the dashboard test will be skipped" >&2
			return 0
		fi
	fi
	if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
		echo "browser: node and npm are needed for playwright-core" >&2
		return 1
	fi
	stamp="$node_dir/.installed-playwright-core-$PLAYWRIGHT_CORE_VERSION"
	if [ ! -e "$stamp" ]; then
		echo "== installing playwright-core@$PLAYWRIGHT_CORE_VERSION into $node_dir"
		mkdir -p "$node_dir"
		npm install --prefix "$node_dir" --no-save --no-audit --no-fund --loglevel=error \
			"playwright-core@$PLAYWRIGHT_CORE_VERSION" >/dev/null
		touch "$stamp"
	fi
	TALLY_CHROMIUM="$(command -v chromium)"
	export TALLY_CHROMIUM
	export TALLY_NODE_MODULES="$node_dir/node_modules"
	export TALLY_BROWSER_REQUIRED=1
}
