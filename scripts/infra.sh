#!/usr/bin/env bash
# Local infrastructure for development and tests: a throwaway PostgreSQL and a
# real Apache Pulsar standalone broker, both on loopback only.
#
#   scripts/infra.sh deps          install missing system packages (apt)
#   scripts/infra.sh test-deps     install what only `make test` needs (shellcheck, the e2e node's packages)
#   scripts/infra.sh up            start what is not running, write $INFRA_DIR/env
#   scripts/infra.sh down          stop what this script started
#   scripts/infra.sh pulsar-stop   stop only the broker (data and ports are kept)
#   scripts/infra.sh pulsar-start  start the broker again on the same ports
#   scripts/infra.sh status        show what runs and the env file
#
# $INFRA_DIR/env holds plain KEY=value lines (no quotes, no export) so that it
# can be both `source`d by a shell and `include`d by make:
#   DATABASE_URL, PULSAR_URL, PULSAR_ADMIN_URL
#
# Environment knobs:
#   INFRA_DIR           state, data and logs (default: <repo>/target/infra)
#   AEROPARTNERS_CACHE  download cache outside the repo (default: ~/.cache/aeropartners)
#   DATABASE_URL        if set (and not our own), PostgreSQL is not started; passed through
#   PULSAR_URL          if set (and not our own), Pulsar is not started; passed through
#                       together with PULSAR_ADMIN_URL
#   PULSAR_GC           JVM GC flags for the broker (default: G1, see start_pulsar)
#   PULSAR_READY_TIMEOUT  seconds to wait for broker health (default: 180)
#   INFRA_ADDRESS       the address both servers listen on and advertise (default:
#                       127.0.0.1). The Kubernetes node of `make e2e` runs this script
#                       inside its network namespace with the node's address, so
#                       that pods reach the servers and nothing listens on the VM's
#                       own interfaces.
#   INFRA_INTERFACE     the interface that carries INFRA_ADDRESS (default: lo); the
#                       in-process bookie binds by interface name.
#   INFRA_CLIENTS       a CIDR that may also connect to PostgreSQL (the pod network
#                       of the e2e node); default: the listen address only.
#
# No systemd and no Docker on the target machines: daemons are started detached
# (setsid) and stopped by the PID recorded in a pidfile. Running two instances of
# this script at once is serialised by a lock file.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "${SCRIPT_DIR}/.." && pwd -P)
# shellcheck source-path=SCRIPTDIR source=free-port.sh
source "${SCRIPT_DIR}/free-port.sh"

INFRA_DIR=${INFRA_DIR:-${REPO_ROOT}/target/infra}
INFRA_ADDRESS=${INFRA_ADDRESS:-127.0.0.1}
INFRA_INTERFACE=${INFRA_INTERFACE:-lo}
CACHE_DIR=${AEROPARTNERS_CACHE:-${HOME}/.cache/aeropartners}

PULSAR_VERSION=4.0.8
PULSAR_ARTIFACT=org.apache.pulsar:pulsar-server-distribution:${PULSAR_VERSION}:tar.gz:bin
PULSAR_HOME_DIR=${CACHE_DIR}/apache-pulsar-${PULSAR_VERSION}

# Default ports; 8080 is deliberately avoided (another service of ours uses it).
PG_DEFAULT_PORT=5433
PULSAR_DEFAULT_BROKER_PORT=6650
PULSAR_DEFAULT_WEB_PORT=8081
PULSAR_DEFAULT_BOOKIE_PORT=3181

PULSAR_READY_TIMEOUT=${PULSAR_READY_TIMEOUT:-180}
PULSAR_STOP_GRACE=20

# The user's own connection strings, captured before anything else runs. They
# are compared with our recorded state later: a value that equals what we
# would write ourselves (e.g. because a Makefile exported our env file) is not
# "external" and must not stop us from (re)starting our own servers.
USER_DATABASE_URL=${DATABASE_URL:-}
USER_PULSAR_URL=${PULSAR_URL:-}
USER_PULSAR_ADMIN_URL=${PULSAR_ADMIN_URL:-}

log() { printf '[infra] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# ---------------------------------------------------------------------------
# paths (set by init_paths once INFRA_DIR exists, so that they are absolute)

init_paths() {
	mkdir -p "${INFRA_DIR}"
	INFRA_DIR=$(cd -- "${INFRA_DIR}" && pwd -P)
	ENV_FILE=${INFRA_DIR}/env
	PG_DATA=${INFRA_DIR}/pg
	PG_LOG=${INFRA_DIR}/pg.log
	PG_PIDFILE=${INFRA_DIR}/pg.pid
	PG_PORTFILE=${INFRA_DIR}/pg.port
	PG_SOCKET_DIR=${INFRA_DIR}/pg-run
	PULSAR_DATA=${INFRA_DIR}/pulsar-data
	PULSAR_LOG=${INFRA_DIR}/pulsar.log
	PULSAR_LOG_DIR_=${INFRA_DIR}/pulsar-logs
	PULSAR_PIDFILE=${INFRA_DIR}/pulsar.pid
	PULSAR_PORTFILE=${INFRA_DIR}/pulsar.ports
	PULSAR_CONF=${INFRA_DIR}/pulsar-standalone.conf
	# Unix socket paths are limited to 107 bytes; a deep checkout would make
	# postgres fail with an obscure error, so fall back to a private /tmp dir.
	if ((${#PG_SOCKET_DIR} > 80)); then
		PG_SOCKET_DIR=/tmp/aeropartners-pg-$(printf '%s' "${INFRA_DIR}" | md5sum | cut -c1-12)
	fi
}

# Serialise concurrent invocations (e.g. `make -j`). The lock fd is closed for
# the daemons we spawn (see `{LOCK_FD}>&-`), otherwise they would hold it forever.
take_lock() {
	exec {LOCK_FD}>"${INFRA_DIR}/.lock"
	if ! flock -w 300 "${LOCK_FD}"; then
		die "another infra.sh holds ${INFRA_DIR}/.lock"
	fi
}

# proc_running PID: the process exists and is not a zombie. kill -0 alone is
# not enough here: our daemons are reparented to PID 1, and the PID 1 of these
# VMs reaps orphans only now and then, so a dead daemon can linger as a zombie.
proc_running() {
	local line state
	[[ "$1" =~ ^[0-9]+$ ]] || return 1
	read -r line 2>/dev/null <"/proc/$1/stat" || return 1
	state=${line##*) }
	state=${state%% *}
	[[ "${state}" != Z && "${state}" != X ]]
}

# pid_alive PID [CMDLINE-SUBSTRING]: the process exists and (optionally) its
# command line contains the substring. The check guards against PID reuse:
# we never signal a process that is not the one we started.
pid_alive() {
	local pid=$1 needle=${2:-} cmdline
	proc_running "${pid}" || return 1
	if [[ -n "${needle}" ]]; then
		# Into a variable rather than `| grep -q`: with pipefail, grep -q
		# exiting early could SIGPIPE tr and turn a match into a failure.
		cmdline=$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null) || return 1
		[[ "${cmdline}" == *"${needle}"* ]] || return 1
	fi
}

# read_pidfile FILE: first line of FILE, or nothing when it does not exist.
read_pidfile() {
	if [[ -f "$1" ]]; then head -n1 "$1"; fi
}

# ---------------------------------------------------------------------------
# deps

pg_bindir() {
	local d best='' best_major=0 major
	# Newest installed major version wins (Debian: /usr/lib/postgresql/<major>/bin).
	for d in /usr/lib/postgresql/*/bin; do
		[[ -x "${d}/initdb" && -x "${d}/pg_ctl" ]] || continue
		major=${d#/usr/lib/postgresql/}
		major=${major%%/*}
		[[ "${major}" =~ ^[0-9]+$ ]] || continue
		if ((major > best_major)); then
			best=${d} best_major=${major}
		fi
	done
	[[ -n "${best}" ]] && printf '%s\n' "${best}"
}

java_major() {
	local java=${1:-java} v
	v=$("${java}" -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -n1)
	printf '%s\n' "${v:-0}"
}

pulsar_dist_present() { [[ -f "${PULSAR_HOME_DIR}/.unpacked" ]]; }

# apt_install PACKAGE...: installs the packages (none: nothing to do).
apt_install() {
	(($# > 0)) || return 0
	[[ ${EUID} -eq 0 ]] || die "missing packages ($*) and not root: install them with apt-get"
	log "installing: $*"
	# Without systemd, Debian's postinst scripts would start a stock
	# cluster on 5432 through invoke-rc.d; policy-rc.d exit code 101
	# ("action forbidden") keeps package installs from starting daemons.
	local policy=/usr/sbin/policy-rc.d own_policy=0
	if [[ ! -e "${policy}" ]]; then
		printf '#!/bin/sh\nexit 101\n' >"${policy}"
		chmod 755 "${policy}"
		own_policy=1
		# Also on Ctrl-C: a leftover policy-rc.d would silently block
		# every later package from starting its service.
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	local rc=0
	{
		DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
	} >&2 || rc=$?
	if ((own_policy)); then
		rm -f "${policy}"
		trap - EXIT
	fi
	((rc == 0)) || die "apt-get failed (${rc})"
}

cmd_deps() {
	local missing=()
	pg_bindir >/dev/null || missing+=(postgresql)
	command -v protoc >/dev/null || missing+=(protobuf-compiler)
	command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
	command -v curl >/dev/null || missing+=(curl)
	# Maven is only needed to fetch the Pulsar distribution into the cache.
	if ! pulsar_dist_present && ! command -v mvn >/dev/null; then
		missing+=(maven)
	fi
	apt_install "${missing[@]}"
	local major
	major=$(java_major "$(pulsar_java)")
	if ((major < 17)); then
		die "Pulsar ${PULSAR_VERSION} needs Java 17+, found ${major}: apt-get install openjdk-17-jre-headless"
	fi
}

# Java used for Pulsar: Debian's JDK 17 when present (the tested combination;
# a newer JDK on PATH is not guaranteed to work with Pulsar 4.0), else PATH.
pulsar_java() {
	local arch jh
	arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
	jh=/usr/lib/jvm/java-17-openjdk-${arch}
	if [[ -x "${jh}/bin/java" ]]; then
		printf '%s\n' "${jh}/bin/java"
	else
		command -v java
	fi
}

# ---------------------------------------------------------------------------
# PostgreSQL

pg_our_url() {
	local port=$1
	printf 'postgres://aeropartners:aeropartners@%s:%s/aeropartners\n' "${INFRA_ADDRESS}" "${port}"
}

pg_recorded_port() { read_pidfile "${PG_PORTFILE}"; }

# 0 when the postmaster from our pidfile is alive and accepts connections.
pg_running() {
	local pid port
	pid=$(read_pidfile "${PG_PIDFILE}")
	port=$(pg_recorded_port)
	[[ -n "${port}" ]] || return 1
	pid_alive "${pid}" "${PG_DATA}" || return 1
	"${PG_BIN}/pg_isready" -q -h "${INFRA_ADDRESS}" -p "${port}" -t 2
}

ensure_postgres_user() {
	if ! id -u postgres >/dev/null 2>&1; then
		log "creating system user postgres (initdb refuses to run as root)"
		useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
			--shell /usr/sbin/nologin postgres
	fi
	if ! runuser -u postgres -- test -x "${INFRA_DIR}"; then
		die "user postgres cannot reach ${INFRA_DIR} (a parent directory is not world-executable); set INFRA_DIR elsewhere"
	fi
}

as_postgres() { runuser -u postgres -- "$@"; }

start_postgres() {
	PG_BIN=$(pg_bindir) || die "PostgreSQL binaries not found; run: $0 deps"
	ensure_postgres_user

	# A postmaster that died uncleanly leaves postmaster.pid behind; pg_ctl
	# copes with that. One that still runs on this data dir but did not pass
	# pg_running (not answering, lost pidfile, other port) is stopped first.
	if [[ -f "${PG_DATA}/PG_VERSION" ]] && as_postgres "${PG_BIN}/pg_ctl" -D "${PG_DATA}" status >/dev/null 2>&1; then
		log "postgres on ${PG_DATA} runs but is not usable as recorded; restarting it"
		as_postgres "${PG_BIN}/pg_ctl" -D "${PG_DATA}" -m fast -w -t 60 -s stop >&2 || true
	fi

	mkdir -p "${PG_DATA}" "${PG_SOCKET_DIR}"
	chown postgres:postgres "${PG_DATA}" "${PG_SOCKET_DIR}"
	# The superuser gets in over the unix socket without a password, so only
	# postgres (and root) may enter the socket directory.
	chmod 700 "${PG_DATA}" "${PG_SOCKET_DIR}"
	touch "${PG_LOG}"
	chown postgres:postgres "${PG_LOG}"

	if [[ ! -f "${PG_DATA}/PG_VERSION" ]]; then
		log "initdb ${PG_DATA}"
		# Unix socket: trust (its directory is private, see above); this is
		# how the script provisions roles. TCP: real password auth, so that
		# the application exercises the credentials in DATABASE_URL.
		as_postgres "${PG_BIN}/initdb" -D "${PG_DATA}" -U postgres -E UTF8 --locale=C.UTF-8 \
			--auth-local=trust --auth-host=scram-sha-256 >>"${PG_LOG}" 2>&1 ||
			die "initdb failed, see ${PG_LOG}"
		printf "\n# Settings managed by scripts/infra.sh (rewritten on every start)\ninclude_if_exists = 'infra.conf'\n" \
			>>"${PG_DATA}/postgresql.conf"
	fi

	# Keep the recorded port when it is free, so that URLs stay stable.
	local port
	port=$(pg_recorded_port)
	if [[ -z "${port}" ]] || port_in_use "${port}"; then
		port=$(free_port "${PG_DEFAULT_PORT}")
	fi

	cat >"${PG_DATA}/infra.conf" <<-EOF
		# Written by scripts/infra.sh; edits are overwritten.
		listen_addresses = '${INFRA_ADDRESS}'
		port = ${port}
		unix_socket_directories = '${PG_SOCKET_DIR}'
		# Integration tests and sqlx::test pools open many connections.
		max_connections = 300
		shared_buffers = 256MB
		# We benchmark against this server: keep full durability (the defaults),
		# spelled out so nobody "optimises" them away by accident.
		fsync = on
		synchronous_commit = on
		full_page_writes = on
		logging_collector = off
		hba_file = '${PG_DATA}/infra_hba.conf'
	EOF
	# Who may connect over TCP: the listen address itself and, for the e2e node,
	# its pod network (INFRA_CLIENTS); always with the password of DATABASE_URL.
	{
		printf '# Written by scripts/infra.sh; edits are overwritten.\n'
		printf 'local all all trust\n'
		printf 'host all all %s/32 scram-sha-256\n' "${INFRA_ADDRESS}"
		if [[ -n "${INFRA_CLIENTS:-}" ]]; then
			printf 'host all all %s scram-sha-256\n' "${INFRA_CLIENTS}"
		fi
	} >"${PG_DATA}/infra_hba.conf"
	chown postgres:postgres "${PG_DATA}/infra.conf" "${PG_DATA}/infra_hba.conf"

	log "starting postgres on ${INFRA_ADDRESS}:${port}"
	printf '\n=== infra.sh: starting postgres %s ===\n' "$(date -Is)" >>"${PG_LOG}"
	# setsid: new session, so the postmaster does not get the caller's
	# SIGINT/SIGHUP (e.g. Ctrl-C in `make test`). pg_ctl -w returns once the
	# server accepts connections.
	if ! as_postgres setsid -w "${PG_BIN}/pg_ctl" -D "${PG_DATA}" -l "${PG_LOG}" -w -t 120 -s start \
		</dev/null >&2 {LOCK_FD}>&-; then
		tail -n 50 "${PG_LOG}" >&2
		die "postgres failed to start, see ${PG_LOG}"
	fi
	head -n1 "${PG_DATA}/postmaster.pid" >"${PG_PIDFILE}"
	printf '%s\n' "${port}" >"${PG_PORTFILE}"

	# Idempotent provisioning. CREATEDB because #[sqlx::test] creates a
	# database per test.
	as_postgres "${PG_BIN}/psql" -h "${PG_SOCKET_DIR}" -p "${port}" -U postgres -d postgres \
		-v ON_ERROR_STOP=1 -qAt >/dev/null <<-'SQL'
		DO $$
		BEGIN
		  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'aeropartners') THEN
		    CREATE ROLE aeropartners LOGIN CREATEDB PASSWORD 'aeropartners';
		  ELSE
		    ALTER ROLE aeropartners LOGIN CREATEDB PASSWORD 'aeropartners';
		  END IF;
		END $$;
		SELECT 'CREATE DATABASE aeropartners OWNER aeropartners'
		 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'aeropartners')\gexec
	SQL
	log "postgres ready (pid $(read_pidfile "${PG_PIDFILE}"))"
}

stop_postgres() {
	local pid
	pid=$(read_pidfile "${PG_PIDFILE}")
	if pid_alive "${pid}" "${PG_DATA}"; then
		PG_BIN=$(pg_bindir) || die "PostgreSQL binaries not found"
		log "stopping postgres (pid ${pid})"
		as_postgres "${PG_BIN}/pg_ctl" -D "${PG_DATA}" -m fast -w -t 60 -s stop >&2 ||
			die "pg_ctl stop failed"
	elif [[ -n "${pid}" ]]; then
		log "postgres pid ${pid} is not running"
	else
		log "postgres is not running (no pidfile)"
	fi
	rm -f "${PG_PIDFILE}"
}

# ---------------------------------------------------------------------------
# Pulsar

ensure_pulsar_dist() {
	pulsar_dist_present && return 0
	command -v mvn >/dev/null || die "mvn not found; run: $0 deps"
	mkdir -p "${CACHE_DIR}"
	local tarball=${HOME}/.m2/repository/org/apache/pulsar/pulsar-server-distribution/${PULSAR_VERSION}/pulsar-server-distribution-${PULSAR_VERSION}-bin.tar.gz
	if [[ ! -f "${tarball}" ]]; then
		log "fetching ${PULSAR_ARTIFACT} from Maven Central (about 250 MB, once; kept in ~/.m2)"
		mvn -q -B dependency:get -Dartifact="${PULSAR_ARTIFACT}" -Dtransitive=false >&2 ||
			die "mvn dependency:get ${PULSAR_ARTIFACT} failed"
	fi
	local tmp
	tmp=$(mktemp -d "${CACHE_DIR}/.pulsar-unpack.XXXXXX")
	if [[ ! -f "${tarball}" ]]; then
		# Local repository is not in the default place (settings.xml):
		# let Maven copy the artifact out of wherever it keeps it.
		mvn -q -B dependency:copy -Dartifact="${PULSAR_ARTIFACT}" -DoutputDirectory="${tmp}" >&2 ||
			die "mvn dependency:copy ${PULSAR_ARTIFACT} failed"
		tarball=$(ls "${tmp}"/pulsar-server-distribution-*.tar.gz)
	fi
	log "unpacking Pulsar ${PULSAR_VERSION} into ${PULSAR_HOME_DIR}"
	tar -xzf "${tarball}" -C "${tmp}"
	rm -rf "${PULSAR_HOME_DIR}"
	# Unpack into a temp dir and rename: an interrupted unpack never looks complete.
	mv "${tmp}/apache-pulsar-${PULSAR_VERSION}" "${PULSAR_HOME_DIR}"
	rm -rf "${tmp}"
	touch "${PULSAR_HOME_DIR}/.unpacked"
}

# Loads BROKER_PORT, WEB_PORT, BOOKIE_PORT from the state file (if any).
load_pulsar_ports() {
	BROKER_PORT='' WEB_PORT='' BOOKIE_PORT=''
	[[ -f "${PULSAR_PORTFILE}" ]] || return 1
	local key value
	while IFS='=' read -r key value; do
		case "${key}" in
		BROKER_PORT) BROKER_PORT=${value} ;;
		WEB_PORT) WEB_PORT=${value} ;;
		BOOKIE_PORT) BOOKIE_PORT=${value} ;;
		esac
	done <"${PULSAR_PORTFILE}"
	[[ -n "${BROKER_PORT}" && -n "${WEB_PORT}" && -n "${BOOKIE_PORT}" ]]
}

pulsar_our_url() { printf 'pulsar://%s:%s\n' "${INFRA_ADDRESS}" "$1"; }
pulsar_our_admin_url() { printf 'http://%s:%s\n' "${INFRA_ADDRESS}" "$1"; }

# 0 when the broker from our pidfile is alive and its admin API answers.
# /admin/v2/brokers/ready is cheap (no produce/consume round trip like
# /health), which keeps the `up` fast path well under a second.
pulsar_running() {
	local pid
	pid=$(read_pidfile "${PULSAR_PIDFILE}")
	pid_alive "${pid}" "${PULSAR_CONF}" || return 1
	load_pulsar_ports || return 1
	[[ "$(curl -sf --max-time 3 "$(pulsar_our_admin_url "${WEB_PORT}")/admin/v2/brokers/ready" 2>/dev/null)" == ok ]]
}

# set_conf FILE KEY VALUE: replace "KEY=..." or append it.
set_conf() {
	local file=$1 key=$2 value=$3
	if grep -q "^${key}=" "${file}"; then
		sed -i "s|^${key}=.*|${key}=${value}|" "${file}"
	else
		printf '%s=%s\n' "${key}" "${value}" >>"${file}"
	fi
}

write_pulsar_conf() {
	cp "${PULSAR_HOME_DIR}/conf/standalone.conf" "${PULSAR_CONF}"
	# The shipped standalone.conf has no trailing newline: appending a key
	# without this would glue it onto the last line and break the broker.
	printf '\n' >>"${PULSAR_CONF}"
	# One address only; clients follow lookups to the advertised address.
	set_conf "${PULSAR_CONF}" bindAddress "${INFRA_ADDRESS}"
	set_conf "${PULSAR_CONF}" advertisedAddress "${INFRA_ADDRESS}"
	set_conf "${PULSAR_CONF}" brokerServicePort "${BROKER_PORT}"
	set_conf "${PULSAR_CONF}" webServicePort "${WEB_PORT}"
	# The in-process bookie reads the same file as a BookKeeper
	# ServerConfiguration. Without these it binds 0.0.0.0 on a random port:
	# listeningInterface=lo needs allowLoopback=true, and
	# allowEphemeralPorts=true makes it honour --bookkeeper-port.
	set_conf "${PULSAR_CONF}" listeningInterface "${INFRA_INTERFACE}"
	set_conf "${PULSAR_CONF}" allowLoopback true
	set_conf "${PULSAR_CONF}" allowEphemeralPorts true
	# Tests publish before a subscription may exist; the default deletes
	# such "inactive" topics (and their messages) after 60 s.
	set_conf "${PULSAR_CONF}" brokerDeleteInactiveTopicsEnabled false
	# Not needed by our Rust client; one service less to start.
	set_conf "${PULSAR_CONF}" webSocketServiceEnabled false
	set_conf "${PULSAR_CONF}" functionsWorkerEnabled false
}

# start_pulsar MODE: MODE=up may pick new ports (and then wipes the data, since
# the bookie's identity is its host:port); MODE=restart must reuse the
# recorded ports (pulsar-start, broker-outage tests).
start_pulsar() {
	local mode=$1
	ensure_pulsar_dist

	local oldpid
	oldpid=$(read_pidfile "${PULSAR_PIDFILE}")
	if pid_alive "${oldpid}" "${PULSAR_CONF}"; then
		log "pulsar pid ${oldpid} is alive but not answering; stopping it first"
		stop_pulsar
	fi

	if load_pulsar_ports; then
		local p busy=()
		for p in "${BROKER_PORT}" "${WEB_PORT}" "${BOOKIE_PORT}"; do
			if port_in_use "${p}"; then busy+=("${p}"); fi
		done
		if ((${#busy[@]} > 0)); then
			if [[ "${mode}" == restart ]]; then
				die "recorded Pulsar port(s) ${busy[*]} are taken by another process; cannot restart on the same ports"
			fi
			log "recorded Pulsar port(s) ${busy[*]} are busy: choosing new ports and wiping ${PULSAR_DATA}"
			rm -rf "${PULSAR_DATA}"
			BROKER_PORT='' WEB_PORT='' BOOKIE_PORT=''
		fi
	elif [[ "${mode}" == restart ]]; then
		die "no recorded Pulsar ports in ${PULSAR_PORTFILE}; run: $0 up"
	fi
	if [[ -z "${BROKER_PORT}" ]]; then
		# New ports mean new bookie identity: old data would not match it.
		rm -rf "${PULSAR_DATA}"
		BROKER_PORT=$(free_port "${PULSAR_DEFAULT_BROKER_PORT}")
		WEB_PORT=$(free_port "${PULSAR_DEFAULT_WEB_PORT}" "${BROKER_PORT}")
		BOOKIE_PORT=$(free_port "${PULSAR_DEFAULT_BOOKIE_PORT}" "${BROKER_PORT}" "${WEB_PORT}")
		printf 'BROKER_PORT=%s\nWEB_PORT=%s\nBOOKIE_PORT=%s\n' "${BROKER_PORT}" "${WEB_PORT}" "${BOOKIE_PORT}" \
			>"${PULSAR_PORTFILE}"
	fi

	write_pulsar_conf
	mkdir -p "${PULSAR_DATA}" "${PULSAR_LOG_DIR_}"

	local java_bin
	java_bin=$(pulsar_java)
	log "starting pulsar ${PULSAR_VERSION} (broker ${INFRA_ADDRESS}:${BROKER_PORT}, admin ${INFRA_ADDRESS}:${WEB_PORT}, bookie ${INFRA_ADDRESS}:${BOOKIE_PORT})"
	printf '\n=== infra.sh: starting pulsar %s ===\n' "$(date -Is)" >>"${PULSAR_LOG}"
	# Memory: the default asks for 2 GiB heap + 4 GiB direct.
	# GC: the stock PULSAR_GC is ZGC + AlwaysPreTouch, which pre-faults the whole
	# heap and, with ZGC's multi-mapping, shows ~1.8 GB RSS (~770 MB PSS); G1 without
	# pre-touch starts as fast and stays at ~350 MB RSS on these 2-core VMs.
	# setsid + nohup: detached from the caller's session and terminal, so it
	# survives the shell that ran `make`. bin/pulsar execs java, so $! is the JVM.
	(
		cd "${PULSAR_DATA}"
		export JAVA_HOME=${java_bin%/bin/java}
		export PULSAR_MEM="-Xms512m -Xmx1g -XX:MaxDirectMemorySize=1g"
		export PULSAR_GC=${PULSAR_GC:-"-XX:+UseG1GC -XX:MaxGCPauseMillis=10 -XX:+ParallelRefProcEnabled -XX:+PerfDisableSharedMem"}
		export PULSAR_STANDALONE_CONF=${PULSAR_CONF}
		export PULSAR_LOG_DIR=${PULSAR_LOG_DIR_}
		# The stock GC log is named per PID (pulsar_gc_<pid>.log, 10 x 20 MB
		# each), so every restart would leave another set behind; keep one
		# bounded set instead.
		export PULSAR_GC_LOG="-Xlog:async -Xlog:gc*,safepoint:${PULSAR_LOG_DIR_}/pulsar_gc.log:time,uptime,tags:filecount=2,filesize=20M"
		exec setsid nohup "${PULSAR_HOME_DIR}/bin/pulsar" standalone \
			--config "${PULSAR_CONF}" \
			--no-functions-worker --no-stream-storage \
			--advertised-address "${INFRA_ADDRESS}" \
			--metadata-dir "${PULSAR_DATA}/metadata" \
			--bookkeeper-dir "${PULSAR_DATA}/bookkeeper" \
			--bookkeeper-port "${BOOKIE_PORT}"
	) </dev/null >>"${PULSAR_LOG}" 2>&1 {LOCK_FD}>&- &
	local pid=$!
	printf '%s\n' "${pid}" >"${PULSAR_PIDFILE}"

	wait_pulsar_healthy "${pid}"
}

wait_pulsar_healthy() {
	local pid=$1 admin start elapsed last_report=0 answer t0
	admin=$(pulsar_our_admin_url "${WEB_PORT}")
	start=${SECONDS}
	t0=${EPOCHREALTIME/./}
	while :; do
		elapsed=$((SECONDS - start))
		if ! proc_running "${pid}"; then
			log "pulsar exited during startup; last 50 lines of ${PULSAR_LOG}:"
			tail -n 50 "${PULSAR_LOG}" >&2
			rm -f "${PULSAR_PIDFILE}"
			exit 1
		fi
		answer=$(curl -sf --max-time 10 "${admin}/admin/v2/brokers/health" 2>/dev/null || true)
		if [[ "${answer}" == ok ]]; then
			elapsed=$(((${EPOCHREALTIME/./} - t0) / 100000))
			log "pulsar healthy after $((elapsed / 10)).$((elapsed % 10))s (pid ${pid})"
			return 0
		fi
		if ((elapsed >= PULSAR_READY_TIMEOUT)); then
			log "pulsar not healthy after ${PULSAR_READY_TIMEOUT}s; last 50 lines of ${PULSAR_LOG}:"
			tail -n 50 "${PULSAR_LOG}" >&2
			# A broker that failed half-way keeps running without serving
			# anything; do not leave it behind.
			stop_pulsar
			exit 1
		fi
		if ((elapsed - last_report >= 5)); then
			log "waiting for pulsar health (${elapsed}s)"
			last_report=${elapsed}
		fi
		sleep 0.5
	done
}

stop_pulsar() {
	local pid i
	pid=$(read_pidfile "${PULSAR_PIDFILE}")
	if pid_alive "${pid}" "${PULSAR_CONF}"; then
		log "stopping pulsar (pid ${pid})"
		kill -TERM "${pid}" 2>/dev/null || true
		for ((i = 0; i < PULSAR_STOP_GRACE * 10; i++)); do
			proc_running "${pid}" || break
			sleep 0.1
		done
		if proc_running "${pid}"; then
			log "pulsar did not exit within ${PULSAR_STOP_GRACE}s; sending SIGKILL"
			kill -KILL "${pid}" 2>/dev/null || true
			while proc_running "${pid}"; do sleep 0.1; done
		fi
	elif [[ -n "${pid}" ]]; then
		log "pulsar pid ${pid} is not running"
	else
		log "pulsar is not running (no pidfile)"
	fi
	rm -f "${PULSAR_PIDFILE}"
}

# ---------------------------------------------------------------------------
# env file

# Decide per component whether the user supplied it. Sets PG_EXTERNAL and
# PULSAR_EXTERNAL to 1/0.
classify_external() {
	local port
	PG_EXTERNAL=0
	PULSAR_EXTERNAL=0
	if [[ -n "${USER_DATABASE_URL}" ]]; then
		port=$(pg_recorded_port)
		if [[ -z "${port}" || "${USER_DATABASE_URL}" != "$(pg_our_url "${port}")" ]]; then
			PG_EXTERNAL=1
		fi
	fi
	if [[ -n "${USER_PULSAR_URL}" ]]; then
		if ! load_pulsar_ports || [[ "${USER_PULSAR_URL}" != "$(pulsar_our_url "${BROKER_PORT}")" ]]; then
			PULSAR_EXTERNAL=1
		fi
	fi
}

check_env_value() {
	# make and sh would both mangle these; the file format has no quoting.
	if [[ "$2" =~ [[:space:]\$\#\"\'\\] ]]; then
		log "warning: $1 contains characters that make/sh treat specially; the env file may not round-trip"
	fi
}

write_env_file() {
	local db pulsar admin tmp
	if ((PG_EXTERNAL)); then
		db=${USER_DATABASE_URL}
	else
		db=$(pg_our_url "$(pg_recorded_port)")
	fi
	if ((PULSAR_EXTERNAL)); then
		pulsar=${USER_PULSAR_URL}
		admin=${USER_PULSAR_ADMIN_URL}
	else
		load_pulsar_ports
		pulsar=$(pulsar_our_url "${BROKER_PORT}")
		admin=$(pulsar_our_admin_url "${WEB_PORT}")
	fi
	check_env_value DATABASE_URL "${db}"
	check_env_value PULSAR_URL "${pulsar}"
	tmp=$(mktemp "${ENV_FILE}.XXXXXX")
	{
		printf 'DATABASE_URL=%s\n' "${db}"
		printf 'PULSAR_URL=%s\n' "${pulsar}"
		if [[ -n "${admin}" ]]; then
			check_env_value PULSAR_ADMIN_URL "${admin}"
			printf 'PULSAR_ADMIN_URL=%s\n' "${admin}"
		else
			log "warning: PULSAR_URL given without PULSAR_ADMIN_URL; env file has no admin URL"
		fi
	} >"${tmp}"
	chmod 644 "${tmp}"
	mv -f "${tmp}" "${ENV_FILE}"
}

# ---------------------------------------------------------------------------
# commands

cmd_up() {
	cmd_deps
	PG_BIN=$(pg_bindir) || die "PostgreSQL binaries not found"
	classify_external

	if ((PG_EXTERNAL)); then
		log "DATABASE_URL given: not starting PostgreSQL"
	elif pg_running; then
		log "postgres already running (pid $(read_pidfile "${PG_PIDFILE}"), port $(pg_recorded_port))"
	else
		start_postgres
	fi

	if ((PULSAR_EXTERNAL)); then
		log "PULSAR_URL given: not starting Pulsar"
	elif pulsar_running; then
		log "pulsar already running (pid $(read_pidfile "${PULSAR_PIDFILE}"), broker port ${BROKER_PORT})"
	else
		start_pulsar up
	fi

	write_env_file
	log "wrote ${ENV_FILE}"
	cat "${ENV_FILE}"
}

cmd_down() {
	stop_pulsar
	stop_postgres
	# The env file describes running servers; do not leave a stale one. Ports
	# and data stay, so the next `up` reuses them.
	rm -f "${ENV_FILE}"
}

# What `make test` needs besides the servers (not `make run`): shellcheck, the cluster of
# `make e2e` (containerd, runc, the CNI plugins, buildah, iptables, conntrack, ipset for
# kube-router's NetworkPolicy firewall, a static busybox for the storage helper's shell; see
# k8s-cluster.sh), and the browser of the console tests
# (Debian's chromium, with a font so that its screenshots have readable text).
TEST_PACKAGES=(shellcheck containerd runc containernetworking-plugins buildah iptables conntrack
	ipset busybox-static chromium fonts-dejavu-core)

cmd_test_deps() {
	local missing=() p
	for p in "${TEST_PACKAGES[@]}"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	apt_install "${missing[@]}"
}

cmd_pulsar_stop() { stop_pulsar; }

# The fault matrix's database restart: a fast shutdown (clients cut), then a start.
cmd_pg_restart() {
	stop_postgres
	start_postgres
}

cmd_pulsar_start() {
	if pulsar_running; then
		log "pulsar already running (pid $(read_pidfile "${PULSAR_PIDFILE}"))"
		return 0
	fi
	start_pulsar restart
}

cmd_status() {
	local pid port rss
	PG_BIN=$(pg_bindir || true)
	pid=$(read_pidfile "${PG_PIDFILE}")
	port=$(pg_recorded_port)
	if [[ -n "${PG_BIN}" ]] && pg_running; then
		rss=$(ps -o rss= -p "${pid}" | tr -d ' ')
		echo "postgres: running  pid ${pid}  ${INFRA_ADDRESS}:${port}  data ${PG_DATA}  rss(postmaster) ${rss} kB"
	elif [[ -n "${pid}" ]]; then
		echo "postgres: NOT answering (pidfile says ${pid})"
	else
		echo "postgres: stopped"
	fi
	pid=$(read_pidfile "${PULSAR_PIDFILE}")
	if pulsar_running; then
		rss=$(ps -o rss= -p "${pid}" | tr -d ' ')
		echo "pulsar:   running  pid ${pid}  broker ${INFRA_ADDRESS}:${BROKER_PORT}  admin ${INFRA_ADDRESS}:${WEB_PORT}  bookie ${INFRA_ADDRESS}:${BOOKIE_PORT}  rss ${rss} kB"
	elif [[ -n "${pid}" ]]; then
		echo "pulsar:   NOT answering (pidfile says ${pid})"
	else
		echo "pulsar:   stopped"
	fi
	if [[ -f "${ENV_FILE}" ]]; then
		echo "--- ${ENV_FILE}"
		cat "${ENV_FILE}"
	else
		echo "--- no ${ENV_FILE}"
	fi
}

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

main() {
	local cmd=${1:-}
	case "${cmd}" in
	deps | test-deps | up | down | pulsar-stop | pulsar-start | pg-restart | status) ;;
	-h | --help | help)
		usage
		return 0
		;;
	*)
		usage >&2
		return 2
		;;
	esac
	init_paths
	if [[ "${cmd}" == deps ]]; then
		cmd_deps
		return 0
	fi
	if [[ "${cmd}" == test-deps ]]; then
		cmd_test_deps
		return 0
	fi
	take_lock
	case "${cmd}" in
	up) cmd_up ;;
	down) cmd_down ;;
	pulsar-stop) cmd_pulsar_stop ;;
	pulsar-start) cmd_pulsar_start ;;
	pg-restart) cmd_pg_restart ;;
	status) cmd_status ;;
	esac
}

main "$@"
