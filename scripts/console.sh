#!/usr/bin/env bash
# The operations console (services/gateway/console/, served by the gateway at /console).
#
#   scripts/console.sh build   type-check and build the page into services/gateway/console/dist,
#                              which the gateway embeds when it is compiled; nothing happens
#                              when dist is newer than every source (so cargo does not
#                              recompile the gateway for nothing)
#   scripts/console.sh test    the browser tests (tests/console/) against CONSOLE_URL, in
#                              Debian's chromium driven by playwright-core; screenshots go to
#                              target/console/. `make console-test` runs them against a
#                              platform of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly SOURCE_DIR=services/gateway/console
readonly TEST_DIR=tests/console
# shellcheck source=scripts/npm-lib.sh
source scripts/npm-lib.sh

log() { printf '[console] %s\n' "$*" >&2; }

build() {
	npm_ci_once "${SOURCE_DIR}" "vite, typescript, preact and uPlot (about 10 s)"
	local built="${SOURCE_DIR}/dist/index.html" newer
	if [[ -f "${built}" ]]; then
		newer=$(find "${SOURCE_DIR}/src" "${SOURCE_DIR}/index.html" "${SOURCE_DIR}/vite.config.ts" \
			"${SOURCE_DIR}/tsconfig.json" "${SOURCE_DIR}/package-lock.json" -newer "${built}" -print -quit)
		[[ -z "${newer}" ]] && return 0
	fi
	log "building the console into ${SOURCE_DIR}/dist"
	npm run --prefix "${SOURCE_DIR}" --silent build >&2
}

test_console() {
	[[ -x /usr/bin/chromium ]] || {
		log "no /usr/bin/chromium: scripts/infra.sh test-deps installs it"
		exit 1
	}
	npm_ci_once "${TEST_DIR}" "playwright-core (no browser download)"
	mkdir -p target/console
	node --test --test-concurrency=1 --test-reporter=spec "${TEST_DIR}/console.test.mjs"
}

case "${1:-}" in
build) build ;;
test) test_console ;;
*)
	log "usage: $0 build | test"
	exit 2
	;;
esac
