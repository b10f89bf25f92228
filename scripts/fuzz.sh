#!/usr/bin/env bash
# Schema-driven fuzzing of every API from its own OpenAPI document (schemathesis).
#
#   scripts/fuzz.sh install                       install schemathesis (pinned by
#                                                 tests/fuzz/requirements.txt) into a virtualenv
#                                                 under ${AEROPARTNERS_CACHE:-~/.cache/aeropartners}, once
#   scripts/fuzz.sh run NAME SCHEMA_URL BASE_URL [schemathesis args]
#                                                 fuzz one document; reports (JUnit, NDJSON) go to
#                                                 target/fuzz/NAME/
#
# FUZZ_EXAMPLES sets the cases generated per operation and phase (default 30). Every check runs
# but two: positive_data_acceptance and negative_data_rejection ask the document to state every
# business rule as schema (an amount's two decimals, a campaign's dates in order); API.md states
# those in prose and the services answer them with a 400 naming the field. Exits non-zero when a
# check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly REQUIREMENTS=tests/fuzz/requirements.txt
readonly CACHE=${AEROPARTNERS_CACHE:-${HOME}/.cache/aeropartners}
VENV="${CACHE}/schemathesis-$(sha256sum "${REQUIREMENTS}" | cut -c1-12)"
readonly VENV

log() { printf '[fuzz] %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

install() {
	# A virtualenv cannot be moved (its scripts name its path), so completion is marked
	# instead: an install cut short is started again.
	[[ -f "${VENV}/.installed" ]] && return 0
	command -v python3 >/dev/null || die "python3 not found (Debian: apt-get install python3 python3-venv)"
	log "installing schemathesis from PyPI into ${VENV} (about 30 s, once)"
	rm -rf "${VENV}"
	python3 -m venv "${VENV}"
	"${VENV}/bin/pip" install --quiet --disable-pip-version-check -r "${REQUIREMENTS}"
	touch "${VENV}/.installed"
}

run() {
	(($# >= 3)) || die "usage: $0 run NAME SCHEMA_URL BASE_URL [schemathesis args]"
	local name=$1 schema=$2 base=$3
	shift 3
	install
	mkdir -p "target/fuzz/${name}"
	# The hooks (tests/fuzz/hooks.py) sign the collector's webhooks and steer events to an
	# authenticated affiliate when FUZZ_COLLECTOR_AUTH says so.
	PYTHONPATH=tests/fuzz SCHEMATHESIS_HOOKS=hooks \
		"${VENV}/bin/schemathesis" run "${schema}" --url "${base}" \
		--checks all --exclude-checks positive_data_acceptance,negative_data_rejection \
		--max-examples "${FUZZ_EXAMPLES:-30}" --seed "${FUZZ_SEED:-42}" \
		--continue-on-failure --request-timeout 10 --workers 1 \
		--no-color --report junit,ndjson --report-dir "target/fuzz/${name}" \
		"$@"
}

case "${1:-}" in
install) install ;;
run)
	shift
	run "$@"
	;;
*) die "usage: $0 install | run NAME SCHEMA_URL BASE_URL [schemathesis args]" ;;
esac
