#!/usr/bin/env bash
# Functions shared by scripts/kube-apiserver.sh (API server only, loopback) and
# scripts/k8s-cluster.sh (the multi-node cluster of make e2e, in network namespaces):
# processes recorded by PID, a self-signed PKI, kubeconfigs. Sourced, not run.
#
# The caller defines log() and die().

# pid_alive PIDFILE NAME: the recorded PID runs and is still NAME (a PID can be
# reused by an unrelated process after a reboot or a crash; never signal that).
pid_alive() {
	local pidfile=$1 name=$2 pid cmdline
	[[ -f "$pidfile" ]] || return 1
	pid=$(<"$pidfile")
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	[[ -r "/proc/${pid}/cmdline" ]] || return 1
	cmdline=$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null) || return 1
	[[ "$cmdline" == *"/${name} "* || "$cmdline" == "${name} "* ]]
}

# running PID: alive and not a zombie (PID 1 of these machines reaps orphans late,
# so a stopped process can linger in state Z).
running() {
	local stat
	read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
	stat=${stat##*) }
	[[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

# started PIDFILE: the process just started from PIDFILE still runs (not a zombie). Used
# while waiting for a daemon to come up: until the forked child has exec'd the daemon its
# command line is still this script's, so pid_alive would call it gone (a race that failed
# a cold CI run with "etcd exited" and an empty log).
started() {
	local pid
	pid=$(<"$1") || return 1
	running "$pid"
}

# stop PIDFILE NAME [GRACE]: SIGTERM, wait up to GRACE seconds (default 15), then SIGKILL.
stop() {
	local pidfile=$1 name=$2 grace=${3:-15} pid i
	if ! pid_alive "$pidfile" "$name"; then
		rm -f "$pidfile"
		return 0
	fi
	pid=$(<"$pidfile")
	log "stopping ${name} (pid ${pid})"
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < grace * 10; i++)); do
		running "$pid" || break
		sleep 0.1
	done
	if running "$pid"; then
		log "${name} did not stop in ${grace} s; SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			running "$pid" || break
			sleep 0.1
		done
	fi
	rm -f "$pidfile"
}

# start NAME PIDFILE LOG ARGS...: detached (setsid) so that Ctrl-C in the
# terminal or make that ran `up` does not take the servers with it. setsid
# execs in place (the background job is not a group leader), so $! is the
# server's own PID. fd 9 (our lock) is closed for the child, or the lock
# would stay held as long as the server runs and the next `down` would hang.
start() {
	local name=$1 pidfile=$2 logfile=$3
	shift 3
	printf '\n--- %s start %s\n' "$name" "$(date -Is)" >>"$logfile"
	setsid "$@" </dev/null >>"$logfile" 2>&1 9>&- &
	printf '%s\n' "$!" >"$pidfile"
}

# wait_started NAME PIDFILE LOG SECONDS CHECK...: wait until CHECK succeeds; die with the
# log's tail if the process exits or SECONDS pass.
wait_started() {
	local name=$1 pidfile=$2 logfile=$3 limit=$4 i
	shift 4
	for ((i = 0; i < limit * 10; i++)); do
		"$@" && return 0
		started "$pidfile" || {
			tail -n 40 "$logfile" >&2
			die "${name} exited; log: ${logfile}"
		}
		sleep 0.1
	done
	tail -n 40 "$logfile" >&2
	die "${name} not ready after ${limit} s; log: ${logfile}"
}

# etcd_healthy HOST PORT: etcd's /health on its client URL (plain HTTP; bash's /dev/tcp
# avoids depending on curl).
etcd_healthy() {
	local resp
	resp=$(timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2 &&
		printf 'GET /health HTTP/1.0\r\nHost: $1\r\n\r\n' >&3 && cat <&3" 2>/dev/null) || return 1
	[[ "$resp" == *'"health":"true"'* ]]
}

# ---------------------------------------------------------------------------
# PKI: one self-signed CA signs every serving and client cert, plus a separate key pair that
# signs service-account tokens. v3 extensions are spelled out because rustls/webpki (kube-rs)
# rejects a CA without basicConstraints CA:TRUE and leaf certs without SANs.

# gen_ca DIR CN: ca.key/ca.crt and the service-account key pair sa.key/sa.pub in DIR.
gen_ca() {
	local dir=$1 cn=$2
	command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
	(
		cd "$dir" || exit 1
		umask 077
		openssl genrsa -out ca.key 2048 2>/dev/null
		cat >ca.cnf <<-EOF
			[req]
			distinguished_name = dn
			prompt = no
			[dn]
			CN = ${cn}
			[v3_ca]
			basicConstraints = critical, CA:TRUE
			keyUsage = critical, keyCertSign, cRLSign, digitalSignature
			subjectKeyIdentifier = hash
		EOF
		openssl req -x509 -new -key ca.key -config ca.cnf -extensions v3_ca \
			-days 3650 -out ca.crt 2>/dev/null
		openssl genrsa -out sa.key 2048 2>/dev/null
		openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
	)
}

# issue_cert DIR NAME SUBJECT USAGE [SANS]: NAME.key/NAME.crt signed by DIR's CA. USAGE is
# serverAuth or clientAuth; for a client cert the subject's O= becomes its group
# (system:masters bypasses RBAC) and CN= its user name.
issue_cert() {
	local dir=$1 name=$2 subject=$3 usage=$4 sans=${5:-}
	(
		cd "$dir" || exit 1
		umask 077
		{
			printf 'basicConstraints = critical, CA:FALSE\n'
			printf 'keyUsage = critical, digitalSignature, keyEncipherment\n'
			printf 'extendedKeyUsage = %s\n' "$usage"
			[[ -z "$sans" ]] || printf 'subjectAltName = %s\n' "$sans"
			printf 'authorityKeyIdentifier = keyid\n'
		} >"${name}.ext"
		openssl genrsa -out "${name}.key" 2048 2>/dev/null
		openssl req -new -key "${name}.key" -subj "$subject" -out "${name}.csr" 2>/dev/null
		openssl x509 -req -in "${name}.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
			-days 3650 -extfile "${name}.ext" -out "${name}.crt" 2>/dev/null
		rm -f "${name}.csr" ./*.srl
	)
}

# The in-cluster names of the API server, which every serving cert of it carries.
export APISERVER_CLUSTER_SANS="DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local"

# write_kubeconfig FILE SERVER PKI USER: certificates embedded (base64), so the kubeconfig
# works from any directory and for clients that ignore file references.
write_kubeconfig() {
	local file=$1 server=$2 pki=$3 user=$4 tmp=${1}.tmp
	(
		umask 077
		cat >"$tmp" <<-EOF
			apiVersion: v1
			kind: Config
			clusters:
			- name: aeropartners-test
			  cluster:
			    server: ${server}
			    certificate-authority-data: $(base64 -w0 "${pki}/ca.crt")
			users:
			- name: ${user}
			  user:
			    client-certificate-data: $(base64 -w0 "${pki}/${user}.crt")
			    client-key-data: $(base64 -w0 "${pki}/${user}.key")
			contexts:
			- name: aeropartners-test
			  context:
			    cluster: aeropartners-test
			    user: ${user}
			    namespace: default
			current-context: aeropartners-test
		EOF
	)
	mv -f "$tmp" "$file"
}
