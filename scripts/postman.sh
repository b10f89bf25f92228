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

log() { printf '[postman] %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

install() {
	command -v npm >/dev/null || die "npm not found: install Node.js 18 or newer (Debian: apt-get install nodejs npm)"
	# npm ci records the lockfile it installed in node_modules/.package-lock.json: reinstall
	# only when the lockfile changed since.
	if [[ -x "${NEWMAN}" && "${POSTMAN_DIR}/node_modules/.package-lock.json" -nt "${POSTMAN_DIR}/package-lock.json" ]]; then
		return
	fi
	log "installing newman from the npm registry into ${POSTMAN_DIR}/node_modules (about 10 s, once)"
	npm ci --prefix "${POSTMAN_DIR}" --no-audit --no-fund --ignore-scripts --loglevel=error >&2
}

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
