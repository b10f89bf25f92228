#!/usr/bin/env bash
# Find a free TCP port on loopback.
#
#   scripts/free-port.sh [PREFERRED [EXCLUDED...]]   prints a port number
#   source scripts/free-port.sh                       defines port_in_use / free_port
#
# "Free" means nothing listens on that port on ANY address: on Linux a
# listener on 0.0.0.0:P or [::]:P makes a later bind to 127.0.0.1:P fail too.
# The answer is only a hint (another process may grab the port before we bind
# it); callers must still check that their daemon actually came up.

# port_in_use PORT: exit 0 when something listens on TCP PORT.
port_in_use() {
	local port=$1
	if command -v ss >/dev/null 2>&1; then
		# -H: no header, so any output line means "a listener exists".
		[[ -n "$(ss -Hltn "sport = :${port}" 2>/dev/null)" ]]
	else
		# Fallback for images without iproute2: try to connect. Only sees
		# listeners reachable on 127.0.0.1, which is what we bind to anyway.
		(exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null
	fi
}

# free_port PREFERRED [EXCLUDED...]: print PREFERRED if free, else the next
# free port above it (skipping EXCLUDED ones, e.g. ports already chosen for
# other components of the same run but not yet bound).
free_port() {
	local start=${1:-20000}
	shift || true
	local port=$start limit=$((start + 500)) excluded skip
	while ((port < limit && port < 65536)); do
		skip=0
		for excluded in "$@"; do
			if [[ "$port" == "$excluded" ]]; then skip=1; fi
		done
		if ((skip == 0)) && ! port_in_use "$port"; then
			printf '%s\n' "$port"
			return 0
		fi
		port=$((port + 1))
	done
	echo "free-port: no free port in range ${start}..$((limit - 1))" >&2
	return 1
}

# Run as a program (not sourced): print one port.
if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
	set -euo pipefail
	free_port "$@"
fi
