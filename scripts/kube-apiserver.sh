#!/usr/bin/env bash
# A Kubernetes API server for tests, on loopback only: etcd + kube-apiserver,
# no controller-manager, no scheduler, no kubelet.
#
#   scripts/kube-apiserver.sh up     start what is not running, wait for /readyz
#   scripts/kube-apiserver.sh down   stop both (by the PIDs we recorded)
#   scripts/kube-apiserver.sh env    print KUBECONFIG=<path>
#   scripts/kube-apiserver.sh status show what runs
#
# Enough for CRDs, server-side apply, `kubectl apply --dry-run=server`, RBAC,
# and objects whose status the tests write themselves. NOT there, because they
# live in kube-controller-manager: namespace deletion never finishes (the
# namespace controller removes the `kubernetes` finalizer), no garbage
# collection of ownerReferences, no `default` ServiceAccount in new namespaces,
# no ReplicaSets or Pods from Deployments.
#
# State under $K8S_DIR (default <repo>/target/k8s): pki/, etcd/ (data),
# kubeconfig, *.log, *.pid, ports.env. Certificates and etcd data survive
# `down`, so the next `up` is a warm start; `rm -rf target/k8s` resets.
# Binaries come from scripts/k8s-tools.sh (built once, cached outside the repo).
#
# Environment knobs:
#   K8S_DIR                 state dir (default: <repo>/target/k8s)
#   K8S_READY_TIMEOUT       seconds to wait for /readyz (default: 90)
#   AEROPARTNERS_CACHE      passed on to k8s-tools.sh
set -euo pipefail
shopt -s inherit_errexit

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "${SCRIPT_DIR}/.." && pwd -P)
# shellcheck source-path=SCRIPTDIR source=free-port.sh
source "${SCRIPT_DIR}/free-port.sh"
# shellcheck source-path=SCRIPTDIR source=k8s-lib.sh
source "${SCRIPT_DIR}/k8s-lib.sh"

K8S_DIR=${K8S_DIR:-${REPO_ROOT}/target/k8s}
K8S_READY_TIMEOUT=${K8S_READY_TIMEOUT:-90}

# Preferred ports (the next free one above is taken if busy). Away from etcd's
# 2379/2380 and the apiserver's 6443 so a real cluster on a developer's
# machine is not disturbed.
ETCD_CLIENT_DEFAULT_PORT=23790
ETCD_PEER_DEFAULT_PORT=23800
APISERVER_DEFAULT_PORT=16443

# The in-cluster name of the API server; port-independent, so service-account
# tokens stay valid when a later `up` has to move to another port.
SA_ISSUER=https://kubernetes.default.svc.cluster.local

log() { printf '[k8s] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

init_paths() {
	mkdir -p "${K8S_DIR}"
	K8S_DIR=$(cd -- "${K8S_DIR}" && pwd -P)
	PKI=${K8S_DIR}/pki
	ETCD_DATA=${K8S_DIR}/etcd
	KUBECONFIG_FILE=${K8S_DIR}/kubeconfig
	PORTS_FILE=${K8S_DIR}/ports.env
	ETCD_PIDFILE=${K8S_DIR}/etcd.pid
	ETCD_LOG=${K8S_DIR}/etcd.log
	APISERVER_PIDFILE=${K8S_DIR}/kube-apiserver.pid
	APISERVER_LOG=${K8S_DIR}/kube-apiserver.log
}

# ---------------------------------------------------------------------------
# certificates: the serving cert carries the loopback address and name the
# kubeconfig uses, plus the in-cluster names and the first service IP of the
# range, which the API server itself expects to be valid for. The admin client
# cert is in system:masters.

gen_pki() {
	[[ -f "${PKI}/sa.pub" ]] && return 0
	log "generating a CA and certificates in ${PKI}"
	local tmp=${PKI}.tmp
	rm -rf "$tmp"
	mkdir -p "$tmp"
	gen_ca "$tmp" aeropartners-test-ca
	issue_cert "$tmp" server /CN=kube-apiserver serverAuth \
		"IP:127.0.0.1, DNS:localhost, ${APISERVER_CLUSTER_SANS}, IP:10.96.0.1"
	issue_cert "$tmp" admin "/O=system:masters/CN=aeropartners-admin" clientAuth
	rm -rf "${PKI}"
	mv "$tmp" "${PKI}"
}

# ---------------------------------------------------------------------------
# ports: remembered in ports.env and preferred on the next `up`, so a warm
# start keeps the same URLs (and etcd's stored peer URL stays right).

load_ports() {
	ETCD_CLIENT_PORT=${ETCD_CLIENT_DEFAULT_PORT}
	ETCD_PEER_PORT=${ETCD_PEER_DEFAULT_PORT}
	APISERVER_PORT=${APISERVER_DEFAULT_PORT}
	if [[ -f "${PORTS_FILE}" ]]; then
		# shellcheck disable=SC1090
		source "${PORTS_FILE}"
	fi
}

save_ports() {
	printf 'ETCD_CLIENT_PORT=%s\nETCD_PEER_PORT=%s\nAPISERVER_PORT=%s\n' \
		"${ETCD_CLIENT_PORT}" "${ETCD_PEER_PORT}" "${APISERVER_PORT}" >"${PORTS_FILE}"
}

readyz() {
	"${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_FILE}" --request-timeout=2s \
		get --raw /readyz 2>/dev/null | grep -qx ok
}


# ---------------------------------------------------------------------------

start_etcd() {
	if pid_alive "${ETCD_PIDFILE}" etcd; then
		log "etcd already running (pid $(<"${ETCD_PIDFILE}"), 127.0.0.1:${ETCD_CLIENT_PORT})"
		return 0
	fi
	ETCD_CLIENT_PORT=$(free_port "${ETCD_CLIENT_PORT}" "${APISERVER_PORT}")
	ETCD_PEER_PORT=$(free_port "${ETCD_PEER_PORT}" "${ETCD_CLIENT_PORT}" "${APISERVER_PORT}")
	save_ports
	mkdir -p "${ETCD_DATA}"
	chmod 700 "${ETCD_DATA}"
	local client=http://127.0.0.1:${ETCD_CLIENT_PORT} peer=http://127.0.0.1:${ETCD_PEER_PORT}
	log "starting etcd on ${client} (peer ${peer})"
	# Plain HTTP is fine: loopback only, and only the API server talks to it.
	# --unsafe-no-fsync: the data is disposable test state; fsync on these VMs'
	# disks makes every API write wait on the disk and slows the tests.
	# --listen-metrics-urls is not set, so no extra listener is opened.
	start etcd "${ETCD_PIDFILE}" "${ETCD_LOG}" "${BIN_DIR}/etcd" \
		--name aeropartners-test \
		--data-dir "${ETCD_DATA}" \
		--listen-client-urls "${client}" \
		--advertise-client-urls "${client}" \
		--listen-peer-urls "${peer}" \
		--initial-advertise-peer-urls "${peer}" \
		--initial-cluster "aeropartners-test=${peer}" \
		--initial-cluster-state new \
		--unsafe-no-fsync \
		--log-level warn
	wait_started etcd "${ETCD_PIDFILE}" "${ETCD_LOG}" 30 etcd_healthy 127.0.0.1 "${ETCD_CLIENT_PORT}"
}

start_apiserver() {
	if pid_alive "${APISERVER_PIDFILE}" kube-apiserver; then
		log "kube-apiserver already running (pid $(<"${APISERVER_PIDFILE}"), 127.0.0.1:${APISERVER_PORT})"
		return 0
	fi
	APISERVER_PORT=$(free_port "${APISERVER_PORT}" "${ETCD_CLIENT_PORT}" "${ETCD_PEER_PORT}")
	save_ports
	write_kubeconfig "${KUBECONFIG_FILE}" "https://127.0.0.1:${APISERVER_PORT}" "${PKI}" admin
	log "starting kube-apiserver on https://127.0.0.1:${APISERVER_PORT}"
	# --bind-address / --advertise-address: loopback only. The advertise
	#   address would otherwise be looked up from the host's default route.
	# --endpoint-reconciler-type=none: the reconciler writes the advertise
	#   address into the `kubernetes` Endpoints(Slice) in `default`, and
	#   loopback addresses are invalid there, so it would log an error every
	#   10 s. Nothing in-cluster needs that Service here.
	# --service-cluster-ip-range: only an allocation range inside the API
	#   server (Services get ClusterIPs from it); nothing is routed.
	# --service-account-*: required flags; the issuer is port-independent.
	# --cert-dir: where it would write self-signed certs if the TLS flags were
	#   missing; the default /var/run/kubernetes is outside our state dir.
	# --profiling=false / --enable-priority-and-fairness default: fine for tests.
	start kube-apiserver "${APISERVER_PIDFILE}" "${APISERVER_LOG}" "${BIN_DIR}/kube-apiserver" \
		--bind-address=127.0.0.1 \
		--advertise-address=127.0.0.1 \
		--secure-port="${APISERVER_PORT}" \
		--etcd-servers="http://127.0.0.1:${ETCD_CLIENT_PORT}" \
		--cert-dir="${PKI}" \
		--tls-cert-file="${PKI}/server.crt" \
		--tls-private-key-file="${PKI}/server.key" \
		--client-ca-file="${PKI}/ca.crt" \
		--authorization-mode=RBAC \
		--service-account-issuer="${SA_ISSUER}" \
		--service-account-key-file="${PKI}/sa.pub" \
		--service-account-signing-key-file="${PKI}/sa.key" \
		--service-cluster-ip-range=10.96.0.0/16 \
		--endpoint-reconciler-type=none \
		--profiling=false
}

wait_ready() {
	local start_ns=$1 deadline=$((SECONDS + K8S_READY_TIMEOUT))
	while ((SECONDS < deadline)); do
		if readyz; then
			local ms=$((($(date +%s%N) - start_ns) / 1000000))
			log "API server ready in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s: https://127.0.0.1:${APISERVER_PORT}"
			return 0
		fi
		if ! started "${APISERVER_PIDFILE}"; then
			tail -n 40 "${APISERVER_LOG}" >&2
			die "kube-apiserver exited; log: ${APISERVER_LOG}"
		fi
		sleep 0.25
	done
	tail -n 40 "${APISERVER_LOG}" >&2
	die "kube-apiserver not ready after ${K8S_READY_TIMEOUT} s; log: ${APISERVER_LOG}"
}

cmd_up() {
	init_paths
	# Fast path of k8s-tools.sh when built; the first time this builds (long).
	BIN_DIR=$("${SCRIPT_DIR}/k8s-tools.sh" build)
	# Two `up`s at once (parallel make targets) must not start two etcds.
	exec 9>"${K8S_DIR}/.lock"
	flock 9
	load_ports
	if pid_alive "${ETCD_PIDFILE}" etcd && pid_alive "${APISERVER_PIDFILE}" kube-apiserver &&
		[[ -f "${KUBECONFIG_FILE}" ]] && readyz; then
		log "already running: https://127.0.0.1:${APISERVER_PORT} (reused)"
		printf 'KUBECONFIG=%s\n' "${KUBECONFIG_FILE}"
		return 0
	fi
	local t0
	t0=$(date +%s%N)
	gen_pki
	start_etcd
	start_apiserver
	wait_ready "$t0"
	printf 'KUBECONFIG=%s\n' "${KUBECONFIG_FILE}"
}

cmd_down() {
	init_paths
	exec 9>"${K8S_DIR}/.lock"
	flock 9
	# API server first, so it does not log etcd connection errors while stopping.
	stop "${APISERVER_PIDFILE}" kube-apiserver
	stop "${ETCD_PIDFILE}" etcd
}

cmd_status() {
	init_paths
	load_ports
	BIN_DIR=$("${SCRIPT_DIR}/k8s-tools.sh" path)
	local n
	for n in etcd kube-apiserver; do
		if pid_alive "${K8S_DIR}/${n}.pid" "$n"; then
			printf '%-15s running (pid %s)\n' "$n" "$(<"${K8S_DIR}/${n}.pid")"
		else
			printf '%-15s stopped\n' "$n"
		fi
	done
	if [[ -x "${BIN_DIR}/kubectl" && -f "${KUBECONFIG_FILE}" ]] && readyz; then
		printf 'readyz          ok (https://127.0.0.1:%s)\n' "${APISERVER_PORT}"
	fi
	printf 'KUBECONFIG=%s\n' "${KUBECONFIG_FILE}"
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
env)
	init_paths
	printf 'KUBECONFIG=%s\n' "${KUBECONFIG_FILE}"
	;;
status) cmd_status ;;
*) die "usage: $0 up | down | env | status" ;;
esac
