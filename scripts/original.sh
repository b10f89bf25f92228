#!/usr/bin/env bash
# The reconstruction of the ORIGINAL Python payments API (bench/original/app.py), used as the
# baseline of the payments benchmark. Run from the repository root.
#
#   scripts/original.sh install     create target/original/venv and pip install
#                                   bench/original/requirements.txt (skipped when the venv
#                                   already holds exactly that requirements file)
#   scripts/original.sh run PORT    exec uvicorn on 127.0.0.1:PORT (needs `install` first)
#
# Environment:
#   DATABASE_URL          postgres://user:pass@host:port/db (required by `run`)
#   ORIGINAL_SCHEMA       schema for the app's tables (default: original)
#   ORIGINAL_WORKERS      uvicorn worker processes (default: 1)
#   ORIGINAL_ACCESS_LOG   0 turns uvicorn's access log off (default: on, as a plain
#                         `uvicorn app:app` runs)
#   ORIGINAL_VENV         the virtualenv (default: target/original/venv)
#   PYTHON                the interpreter that creates the venv (default: python3)
set -euo pipefail

app_dir=bench/original
requirements=${app_dir}/requirements.txt
venv=${ORIGINAL_VENV:-target/original/venv}
stamp=${venv}/.requirements.sha256

die() {
	printf 'original.sh: %s\n' "$*" >&2
	exit 1
}

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
	exit 2
}

[[ -f ${requirements} && -f ${app_dir}/app.py ]] ||
	die "run me from the repository root (${app_dir} not found in $(pwd))"

requirements_hash() {
	# The interpreter's version is part of what was installed.
	{
		"${PYTHON:-python3}" --version 2>&1
		cat "${requirements}"
	} | sha256sum | cut -d' ' -f1
}

cmd_install() {
	local want
	want=$(requirements_hash)
	if [[ -x ${venv}/bin/uvicorn && -f ${stamp} && "$(cat "${stamp}")" == "${want}" ]]; then
		printf 'original.sh: %s is up to date\n' "${venv}"
		return 0
	fi
	printf 'original.sh: creating %s\n' "${venv}"
	rm -rf "${venv}"
	mkdir -p "$(dirname "${venv}")"
	"${PYTHON:-python3}" -m venv "${venv}"
	"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check -r "${requirements}"
	printf '%s\n' "${want}" >"${stamp}"
	printf 'original.sh: installed into %s\n' "${venv}"
}

cmd_run() {
	local port=${1:-}
	[[ ${port} =~ ^[0-9]+$ ]] || die "usage: scripts/original.sh run PORT"
	[[ -x ${venv}/bin/uvicorn ]] || die "${venv} is missing: run scripts/original.sh install first"
	: "${DATABASE_URL:?DATABASE_URL is not set}"
	local workers=${ORIGINAL_WORKERS:-1}
	[[ ${workers} =~ ^[1-9][0-9]*$ ]] || die "ORIGINAL_WORKERS must be a positive integer"
	local args=(app:app --app-dir "${app_dir}" --host 127.0.0.1 --port "${port}" --workers "${workers}")
	if [[ ${ORIGINAL_ACCESS_LOG:-1} == 0 ]]; then
		args+=(--no-access-log)
	fi
	export DATABASE_URL
	export ORIGINAL_SCHEMA=${ORIGINAL_SCHEMA:-original}
	exec "${venv}/bin/uvicorn" "${args[@]}"
}

case ${1:-} in
install) cmd_install ;;
run)
	shift
	cmd_run "$@"
	;;
*) usage ;;
esac
