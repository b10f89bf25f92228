#!/usr/bin/env bash
# The Postman collection (postman/), run by newman.
#
#   scripts/postman.sh install            install newman (pinned by postman/package-lock.json)
#                                         into postman/node_modules, once
#   scripts/postman.sh run [newman args]  run the collection with the environment
#                                         postman/${POSTMAN_ENV:-local}.postman_environment.json
#                                         (`make run`'s ports; kind maps the same ones), e.g.
#                                         --env-var base_url=http://127.0.0.1:18000
#                                         or --folder "1. Pagos"
#
# The JUnit report goes to target/postman/junit.xml. Exits non-zero when an assertion fails.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly POSTMAN_DIR=postman
readonly NEWMAN="${POSTMAN_DIR}/node_modules/.bin/newman"
# shellcheck source=scripts/npm-lib.sh
source scripts/npm-lib.sh

log() { printf '[postman] %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

install() { npm_ci_once "${POSTMAN_DIR}" "newman (about 10 s)"; }

run() {
	install
	local environment="${POSTMAN_DIR}/${POSTMAN_ENV:-local}.postman_environment.json"
	[[ -f "${environment}" ]] || die "no environment ${environment}"
	mkdir -p target/postman
	"${NEWMAN}" run "${POSTMAN_DIR}/aeropartners.postman_collection.json" \
		--environment "${environment}" \
		--reporters cli,junit \
		--reporter-junit-export target/postman/junit.xml \
		--reporter-cli-no-success-assertions \
		--color off \
		"$@"
}

case "${1:-}" in
install) install ;;
run)
	shift
	run "$@"
	;;
*) die "usage: $0 install | run [newman options]" ;;
esac
