#!/usr/bin/env bash
# Shared by the scripts that install npm packages (postman.sh, console.sh):
#
#   source scripts/npm-lib.sh      defines npm_ci_once
#
# npm_ci_once DIR WHAT: installs DIR's packages exactly as DIR/package-lock.json pins them,
# unless they already are. npm ci records the lockfile it installed in
# DIR/node_modules/.package-lock.json, so a newer lockfile (a changed pin) reinstalls.
# Install scripts are not run: none of these packages needs one.
npm_ci_once() {
	local dir=$1 what=$2
	command -v npm >/dev/null || {
		printf 'npm not found: install Node.js 20.19 or newer (Debian: apt-get install nodejs npm)\n' >&2
		return 1
	}
	if [[ "${dir}/node_modules/.package-lock.json" -nt "${dir}/package-lock.json" ]]; then
		return 0
	fi
	printf '[npm] installing %s from the npm registry into %s/node_modules (once)\n' "${what}" "${dir}" >&2
	npm ci --prefix "${dir}" --no-audit --no-fund --ignore-scripts --loglevel=error >&2
}
