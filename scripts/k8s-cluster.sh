#!/usr/bin/env bash
# A real Kubernetes cluster shaped like kind's multi-node one (kind-multinode-config.yaml): a
# control plane and worker nodes, from binaries, for `make e2e`. One function per component
# (after Kubernetes' hack/local-up-cluster.sh):
#   control plane   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, CoreDNS
#   each worker     containerd, kubelet, kube-proxy, kube-router (NetworkPolicy)
#   storage         Rancher's local-path-provisioner as the default StorageClass, as kind
#                   ships it (deployed by `up`, its images built here)
#
#   scripts/k8s-cluster.sh up                 start the cluster, wait until every node is Ready
#   scripts/k8s-cluster.sh down               stop everything by PID; leaves no namespace,
#                                             mount, iptables rule or cgroup behind
#   scripts/k8s-cluster.sh image REF BINARY   a FROM-scratch image of BINARY and the shared
#                                             libraries it links, imported into every worker
#   scripts/k8s-cluster.sh import ARCHIVE     an OCI archive imported into every worker
#   scripts/k8s-cluster.sh exec CMD...        CMD in the first worker's network namespace (it
#                                             reaches ClusterIPs, every pod and the API server)
#   scripts/k8s-cluster.sh env                print KUBECONFIG=, NODES=, ...
#   scripts/k8s-cluster.sh status             what runs
#
# Where things live. Every address is inside network namespaces this script creates, so no
# test traffic touches the VM's own interfaces and nothing routes or NATs outside:
#   lab          a namespace holding the bridge `lab0` (no address) that joins the nodes
#   nodes        10.213.0.1 control plane (no kubelet: nothing is scheduled there), then one
#                address per worker, 10.213.0.2, .3, ...; each node is a holder process with
#                its own network and mount namespaces, joined to lab0 by a veth (eth0)
#   pods         10.244.<n>.0/24 on worker n's CNI bridge `cni0`; every node has a static
#                route to every other worker's pod range (what kind's kindnet does)
#   services     10.96.0.0/16 (kube-proxy on each worker, iptables mode); kube-dns 10.96.0.10
#   zones        worker n is in zone-a, zone-b, ... (topology.kubernetes.io/zone)
# No namespace has a default route. Each kubelet has a cgroup root of its own (/<node>):
# without it two kubelets on one kernel take each other's pods for orphans and kill them.
# containerd and the kubelet of a worker share that worker's mount namespace: the paths they
# insist on (/var/lib/kubelet, /var/lib/containerd, /run/containerd, /var/log/pods, ...) are
# bind mounts of the worker's own directories there, and every mount they make disappears
# with the namespace.
#
# Why nsenter and not `ip netns exec`: the latter remounts /sys, which hides the cgroup
# hierarchies the kubelet needs, and `ip netns add` leaves /run/netns mounted.
#
# Environment knobs:
#   K8S_CLUSTER_DIR     state, configs and logs (default: <repo>/target/e2e/cluster); wiped by `up`
#   K8S_WORKERS         number of worker nodes (default 2)
#   AEROPARTNERS_CACHE  passed on to k8s-tools.sh
set -euo pipefail
shopt -s inherit_errexit

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "${SCRIPT_DIR}/.." && pwd -P)
# shellcheck source-path=SCRIPTDIR source=k8s-lib.sh
source "${SCRIPT_DIR}/k8s-lib.sh"

CLUSTER_NAME=aeropartners
CONTROL_PLANE=${CLUSTER_NAME}-control-plane
CONTROL_PLANE_IP=10.213.0.1
NODE_PREFIX=10.213.0
NODE_CIDR=${NODE_PREFIX}.0/24
POD_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
DNS_IP=10.96.0.10
APISERVER_PORT=6443
PAUSE_IMAGE=localhost/aeropartners/pause:3.10
# Debian's packages the nodes need (none of them is on a new machine); infra.sh test-deps
# installs them.
NODE_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack buildah ipset busybox-static)
# The host paths containerd and the kubelet use, replaced by each worker's own directories
# inside its mount namespace.
HOST_PATHS=(/var/lib/kubelet /var/lib/containerd /run/containerd /var/log/pods
	/var/log/containers /var/lib/cni /run/netns /var/local-path-provisioner)
# How fast a lost node is noticed: NotReady 20 s after its kubelet stops (the default is 40 s
# of grace, ~50 s in all), as a production control plane tuned for failover would.
NODE_MONITOR_GRACE=20s

log() { printf '[k8s-cluster] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

init_paths() {
	CLUSTER_DIR=${K8S_CLUSTER_DIR:-${REPO_ROOT}/target/e2e/cluster}
	mkdir -p "${CLUSTER_DIR}"
	CLUSTER_DIR=$(cd -- "${CLUSTER_DIR}" && pwd -P)
	PKI=${CLUSTER_DIR}/pki
	CONF=${CLUSTER_DIR}/conf
	LOGS=${CLUSTER_DIR}/logs
	RUN=${CLUSTER_DIR}/run
	IMAGES=${CLUSTER_DIR}/images
	# Created by `up` outside our directory (mount points, the hugetlb hierarchy's directory);
	# `down` removes exactly these.
	CREATED_FILE=${RUN}/created-dirs
	ENV_FILE=${CLUSTER_DIR}/env
	KUBECONFIG_FILE=${CLUSTER_DIR}/kubeconfig
	WORKERS=()
	local n
	for ((n = 1; n <= ${K8S_WORKERS:-2}; n++)); do
		WORKERS+=("$(worker_name "$n")")
	done
	# `down` stops what `up` started, whatever K8S_WORKERS says now.
	if [[ -f "${RUN}/workers" ]]; then
		mapfile -t WORKERS <"${RUN}/workers"
	fi
}

bin() { printf '%s/%s' "${BIN_DIR}" "$1"; }

# kind's names: aeropartners-worker, aeropartners-worker2, ...
worker_name() { if (($1 == 1)); then printf '%s-worker' "${CLUSTER_NAME}"; else printf '%s-worker%s' "${CLUSTER_NAME}" "$1"; fi; }
worker_index() {
	local name=$1 suffix
	suffix=${name#"${CLUSTER_NAME}-worker"}
	printf '%s' "${suffix:-1}"
}
node_ip() {
	if [[ $1 == "${CONTROL_PLANE}" ]]; then printf '%s' "${CONTROL_PLANE_IP}"; else printf '%s.%s' "${NODE_PREFIX}" "$(($(worker_index "$1") + 1))"; fi
}
pod_cidr() { printf '10.244.%s.0/24' "$(worker_index "$1")"; }
zone() {
	local letters=(a b c d e f g h)
	printf 'zone-%s' "${letters[$((($(worker_index "$1") - 1) % 8))]}"
}
node_dir() { printf '%s/nodes/%s' "${CLUSTER_DIR}" "$1"; }

# ---------------------------------------------------------------------------
# the namespaces

# holder_pid NAME: the process that keeps NAME's namespaces (a node's, or `lab`).
holder_pid() {
	pid_alive "${RUN}/$1.holder.pid" sleep || return 1
	cat "${RUN}/$1.holder.pid"
}

# in_netns NAME CMD...: CMD in NAME's network namespace only.
in_netns() {
	local holder
	holder=$(holder_pid "$1") || die "$1 is not running (scripts/k8s-cluster.sh up)"
	shift
	nsenter --target "${holder}" --net -- "$@"
}

# in_node NAME CMD...: CMD in NAME's network and mount namespaces (containerd, kubelet, ctr).
in_node() {
	local holder
	holder=$(holder_pid "$1") || die "$1 is not running (scripts/k8s-cluster.sh up)"
	shift
	nsenter --target "${holder}" --net --mount -- "$@"
}

# start_holder NAME UNSHARE_FLAGS...: a `sleep infinity` in new namespaces (unshare execs it,
# so the recorded PID is the process that keeps them alive).
start_holder() {
	local name=$1 i
	shift
	start holder "${RUN}/${name}.holder.pid" "${LOGS}/${name}.holder.log" unshare "$@" sleep infinity
	for ((i = 0; i < 50; i++)); do
		holder_pid "${name}" >/dev/null && return 0
		sleep 0.1
	done
	die "the namespace holder of ${name} did not start; log: ${LOGS}/${name}.holder.log"
}

start_lab() {
	log "creating the lab network (bridge lab0, no address)"
	start_holder lab --net
	in_netns lab ip link set lo up
	in_netns lab ip link add lab0 type bridge
	in_netns lab ip link set lab0 up
}

# start_node_namespaces NAME: the node's network and mount namespaces, its eth0 on lab0,
# routes to every worker's pod range but its own.
start_node_namespaces() {
	local name=$1 ip peer other
	ip=$(node_ip "${name}")
	peer=v$(printf '%s' "${ip}" | cut -d. -f4)
	start_holder "${name}" --net --mount --propagation private
	in_netns lab ip link add "${peer}" type veth peer name eth0 netns "$(holder_pid "${name}")"
	in_netns lab ip link set "${peer}" master lab0 up
	in_netns "${name}" ip link set lo up
	in_netns "${name}" ip addr add "${ip}/24" dev eth0
	in_netns "${name}" ip link set eth0 up
	for other in "${WORKERS[@]}"; do
		[[ "${other}" == "${name}" ]] && continue
		in_netns "${name}" ip route add "$(pod_cidr "${other}")" via "$(node_ip "${other}")"
	done
	# Locally originated traffic to a ClusterIP needs a route before kube-proxy's OUTPUT DNAT
	# rewrites it; there is no default route, so nothing leaves the lab.
	in_netns "${name}" ip route add "${SERVICE_CIDR}" dev eth0
	in_netns "${name}" sysctl -qw net.ipv4.ip_forward=1
	# Pod-to-Service-to-pod on the same bridge: the reply must pass iptables to be un-DNATed.
	in_netns "${name}" sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
}

# mount_host_paths NAME: the worker's own directories over the paths its containerd and
# kubelet use, and the hugetlb cgroup hierarchy the kubelet insists on (these VMs do not
# mount it), in its mount namespace only.
mount_host_paths() {
	local name=$1 host path
	host=$(node_dir "${name}")/host
	for path in "${HOST_PATHS[@]}"; do
		mkdir -p "${host}${path}"
		if [[ ! -d "${path}" ]]; then
			mkdir -p "${path}"
			printf '%s\n' "${path}" >>"${CREATED_FILE}"
		fi
		in_node "${name}" mount --bind "${host}${path}" "${path}"
	done
	if [[ ! -d /sys/fs/cgroup/hugetlb ]]; then
		mkdir /sys/fs/cgroup/hugetlb
		printf '%s\n' /sys/fs/cgroup/hugetlb >>"${CREATED_FILE}"
	fi
	if ! in_node "${name}" mountpoint -q /sys/fs/cgroup/hugetlb; then
		in_node "${name}" mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
	fi
}

# make_cgroup_root NAME: /<node> in every v1 hierarchy (the kubelet's cgroupRoot), cpuset's
# cpus and mems copied from the parent (an empty cpuset takes no process).
make_cgroup_root() {
	local name=$1
	# shellcheck disable=SC2016 # expanded by the inner shell, with the node's name as $0
	in_node "${name}" bash -c '
		for hierarchy in /sys/fs/cgroup/*/; do
			[[ ${hierarchy} == */unified/ ]] && continue
			mkdir -p "${hierarchy}$0"
		done
		cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$0/cpuset.cpus"
		cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$0/cpuset.mems"
	' "${name}"
}

# ---------------------------------------------------------------------------
# certificates: one CA; a serving cert for the API server (its address, the first service
# IP, the in-cluster names) and one per kubelet; a client cert per component, named as
# Kubernetes' bootstrap RBAC expects (system:kube-controller-manager, system:kube-scheduler,
# system:kube-proxy, system:node:<name> in system:nodes); the admin in system:masters.

gen_pki() {
	log "generating the cluster's certificates"
	mkdir -p "${PKI}"
	gen_ca "${PKI}" aeropartners-cluster-ca
	issue_cert "${PKI}" apiserver /CN=kube-apiserver serverAuth \
		"IP:${CONTROL_PLANE_IP}, IP:10.96.0.1, ${APISERVER_CLUSTER_SANS}"
	issue_cert "${PKI}" admin "/O=system:masters/CN=aeropartners-admin" clientAuth
	issue_cert "${PKI}" apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
	issue_cert "${PKI}" kube-controller-manager /CN=system:kube-controller-manager clientAuth
	issue_cert "${PKI}" kube-scheduler /CN=system:kube-scheduler clientAuth
	issue_cert "${PKI}" kube-proxy /CN=system:kube-proxy clientAuth
	issue_cert "${PKI}" coredns /CN=aeropartners:coredns clientAuth
	issue_cert "${PKI}" kube-router /CN=aeropartners:kube-router clientAuth
	local user worker
	for worker in "${WORKERS[@]}"; do
		issue_cert "${PKI}" "kubelet-serving-${worker}" "/CN=${worker}" serverAuth \
			"IP:$(node_ip "${worker}"), DNS:${worker}"
		issue_cert "${PKI}" "kubelet-${worker}" "/O=system:nodes/CN=system:node:${worker}" clientAuth
		write_kubeconfig "${CONF}/kubelet-${worker}.kubeconfig" "https://${CONTROL_PLANE_IP}:${APISERVER_PORT}" "${PKI}" "kubelet-${worker}"
	done
	for user in admin kube-controller-manager kube-scheduler kube-proxy coredns kube-router; do
		write_kubeconfig "${CONF}/${user}.kubeconfig" "https://${CONTROL_PLANE_IP}:${APISERVER_PORT}" "${PKI}" "${user}"
	done
	cp "${CONF}/admin.kubeconfig" "${KUBECONFIG_FILE}"
}

kubectl_cluster() { in_netns "${CONTROL_PLANE}" "$(bin kubectl)" --kubeconfig "${KUBECONFIG_FILE}" "$@"; }

# ---------------------------------------------------------------------------
# control plane (in the control plane node's network namespace)

start_etcd() {
	log "starting etcd"
	mkdir -p "${CLUSTER_DIR}/etcd"
	chmod 700 "${CLUSTER_DIR}/etcd"
	# Loopback of the control plane; only the API server talks to it. --unsafe-no-fsync: the
	# cluster is disposable, and fsync on these disks slows every API write.
	start etcd "${RUN}/etcd.pid" "${LOGS}/etcd.log" nsenter --target "$(holder_pid "${CONTROL_PLANE}")" --net -- \
		"$(bin etcd)" --name "${CONTROL_PLANE}" --data-dir "${CLUSTER_DIR}/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster "${CONTROL_PLANE}=http://127.0.0.1:2380" --initial-cluster-state new \
		--unsafe-no-fsync --log-level warn
	wait_started etcd "${RUN}/etcd.pid" "${LOGS}/etcd.log" 30 etcd_ready
}

etcd_ready() {
	in_netns "${CONTROL_PLANE}" bash -c "$(declare -f etcd_healthy); etcd_healthy 127.0.0.1 2379"
}

start_apiserver() {
	log "starting kube-apiserver on https://${CONTROL_PLANE_IP}:${APISERVER_PORT}"
	# The audit log records who changed a ReportVersion (user, verb, outcome): the e2e checks
	# that a switch through the API is recorded under the operator who asked, not under the
	# reports' ServiceAccount. Metadata only, nothing else audited.
	cat >"${CONF}/audit-policy.yaml" <<-EOF
		apiVersion: audit.k8s.io/v1
		kind: Policy
		omitStages: [RequestReceived]
		rules:
		  - level: Metadata
		    resources: [{group: aeropartners.io, resources: [reportversions]}]
		    verbs: [create, update, patch, delete]
		  - level: None
	EOF
	# --kubelet-preferred-address-types=InternalIP: otherwise it resolves a node's hostname
	#   through the VM's resolver.
	# --cert-dir: where it would write self-signed certs; the default is outside our dir.
	start kube-apiserver "${RUN}/kube-apiserver.pid" "${LOGS}/kube-apiserver.log" \
		nsenter --target "$(holder_pid "${CONTROL_PLANE}")" --net -- "$(bin kube-apiserver)" \
		--bind-address="${CONTROL_PLANE_IP}" --advertise-address="${CONTROL_PLANE_IP}" \
		--secure-port="${APISERVER_PORT}" \
		--etcd-servers=http://127.0.0.1:2379 \
		--cert-dir="${PKI}" \
		--tls-cert-file="${PKI}/apiserver.crt" --tls-private-key-file="${PKI}/apiserver.key" \
		--client-ca-file="${PKI}/ca.crt" \
		--kubelet-client-certificate="${PKI}/apiserver-kubelet-client.crt" \
		--kubelet-client-key="${PKI}/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority="${PKI}/ca.crt" \
		--kubelet-preferred-address-types=InternalIP \
		--authorization-mode=Node,RBAC \
		--enable-admission-plugins=NodeRestriction \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="${PKI}/sa.pub" \
		--service-account-signing-key-file="${PKI}/sa.key" \
		--service-cluster-ip-range="${SERVICE_CIDR}" \
		--audit-policy-file="${CONF}/audit-policy.yaml" \
		--audit-log-path="${LOGS}/audit.log" --audit-log-maxsize=20 --audit-log-maxbackup=1 \
		--profiling=false
	wait_started kube-apiserver "${RUN}/kube-apiserver.pid" "${LOGS}/kube-apiserver.log" 90 apiserver_ready
}

apiserver_ready() {
	kubectl_cluster --request-timeout=2s get --raw /readyz 2>/dev/null | grep -qx ok
}

start_controller_manager() {
	log "starting kube-controller-manager"
	# --use-service-account-credentials: each controller acts as its own ServiceAccount,
	#   whose bootstrap roles carry its permissions (as kubeadm runs it).
	# --root-ca-file: published to every namespace as kube-root-ca.crt for projected tokens.
	# -nodeipam: pod ranges are static, one per worker (routes above).
	start kube-controller-manager "${RUN}/kube-controller-manager.pid" "${LOGS}/kube-controller-manager.log" \
		nsenter --target "$(holder_pid "${CONTROL_PLANE}")" --net -- "$(bin kube-controller-manager)" \
		--kubeconfig="${CONF}/kube-controller-manager.kubeconfig" \
		--authentication-kubeconfig="${CONF}/kube-controller-manager.kubeconfig" \
		--authorization-kubeconfig="${CONF}/kube-controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false \
		--use-service-account-credentials=true \
		--service-account-private-key-file="${PKI}/sa.key" \
		--root-ca-file="${PKI}/ca.crt" \
		--cluster-name="${CLUSTER_NAME}" \
		--controllers='*,-nodeipam' \
		--node-monitor-period=2s --node-monitor-grace-period="${NODE_MONITOR_GRACE}" \
		--profiling=false
}

start_scheduler() {
	log "starting kube-scheduler"
	start kube-scheduler "${RUN}/kube-scheduler.pid" "${LOGS}/kube-scheduler.log" \
		nsenter --target "$(holder_pid "${CONTROL_PLANE}")" --net -- "$(bin kube-scheduler)" \
		--kubeconfig="${CONF}/kube-scheduler.kubeconfig" \
		--authentication-kubeconfig="${CONF}/kube-scheduler.kubeconfig" \
		--authorization-kubeconfig="${CONF}/kube-scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false --profiling=false
}

# CoreDNS as a process of the control plane on its address, behind the usual kube-dns
# Service (a selector-less Service + EndpointSlice); pods on every worker reach it through
# their node's route. No `forward`: names outside the cluster fail here instead of reaching
# the VM's resolver.
start_coredns() {
	log "starting CoreDNS"
	grant_reader aeropartners:coredns <<-EOF
		  - apiGroups: [""]
		    resources: [services, namespaces, pods]
		    verbs: [list, watch]
		  - apiGroups: [discovery.k8s.io]
		    resources: [endpointslices]
		    verbs: [list, watch]
	EOF
	kubectl_cluster apply -f - >/dev/null <<-EOF
		apiVersion: v1
		kind: Service
		metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
		spec:
		  clusterIP: ${DNS_IP}
		  ports:
		    - {name: dns, port: 53, protocol: UDP}
		    - {name: dns-tcp, port: 53, protocol: TCP}
		---
		apiVersion: discovery.k8s.io/v1
		kind: EndpointSlice
		metadata:
		  name: kube-dns-control-plane
		  namespace: kube-system
		  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: aeropartners-e2e}
		addressType: IPv4
		endpoints: [{addresses: ["${CONTROL_PLANE_IP}"]}]
		ports:
		  - {name: dns, port: 53, protocol: UDP}
		  - {name: dns-tcp, port: 53, protocol: TCP}
	EOF
	# Outside the cluster's zones every name is NXDOMAIN, as an upstream resolver would answer
	# for a name that does not exist: a SERVFAIL (no server for the zone) ends some resolvers'
	# search lists early (the JVM's Netty resolver does), where NXDOMAIN lets them go on.
	cat >"${CONF}/Corefile" <<-EOF
		cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
		    bind ${CONTROL_PLANE_IP}
		    errors
		    health 127.0.0.1:8080
		    kubernetes cluster.local in-addr.arpa ip6.arpa {
		        kubeconfig ${CONF}/coredns.kubeconfig
		        pods insecure
		        fallthrough in-addr.arpa ip6.arpa
		    }
		    cache 30
		}
		.:53 {
		    bind ${CONTROL_PLANE_IP}
		    errors
		    template ANY ANY {
		        rcode NXDOMAIN
		    }
		}
	EOF
	start coredns "${RUN}/coredns.pid" "${LOGS}/coredns.log" \
		nsenter --target "$(holder_pid "${CONTROL_PLANE}")" --net -- "$(bin coredns)" -conf "${CONF}/Corefile"
}

# grant_reader USER: a ClusterRole with the rules read from stdin (YAML list items), bound to
# the client-certificate user USER (the node processes that watch the cluster: CoreDNS,
# kube-router).
grant_reader() {
	local user=$1 rules
	rules=$(cat)
	kubectl_cluster apply -f - >/dev/null <<-EOF
		apiVersion: rbac.authorization.k8s.io/v1
		kind: ClusterRole
		metadata: {name: "${user}"}
		rules:
		${rules}
		---
		apiVersion: rbac.authorization.k8s.io/v1
		kind: ClusterRoleBinding
		metadata: {name: "${user}"}
		roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "${user}"}
		subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "${user}"}]
	EOF
}

# Read-only rights for each worker's kube-router (user aeropartners:kube-router).
apply_kube_router_rbac() {
	grant_reader aeropartners:kube-router <<-EOF
		  - apiGroups: [""]
		    resources: [namespaces, pods, services, nodes, endpoints]
		    verbs: [get, list, watch]
		  - apiGroups: [networking.k8s.io]
		    resources: [networkpolicies]
		    verbs: [list, watch]
		  - apiGroups: [discovery.k8s.io]
		    resources: [endpointslices]
		    verbs: [list, watch]
	EOF
}

# ---------------------------------------------------------------------------
# a worker node (in its own network and mount namespaces)

write_containerd_config() {
	local name=$1 conf
	conf=$(node_dir "${name}")/conf
	mkdir -p "${conf}/cni"
	cat >"${conf}/containerd.toml" <<-EOF
		# Written by scripts/k8s-cluster.sh. Paths are the defaults: inside the worker's mount
		# namespace they are bind mounts of $(node_dir "${name}")/host.
		version = 2
		root = "/var/lib/containerd"
		state = "/run/containerd"
		# "opt" would create /opt/containerd on the VM.
		disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
		  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
		  "io.containerd.snapshotter.v1.devmapper"]
		[grpc]
		  address = "/run/containerd/containerd.sock"
		[plugins."io.containerd.grpc.v1.cri"]
		  sandbox_image = "${PAUSE_IMAGE}"
		  # These VMs lack CAP_SYS_RESOURCE: without it every pod fails with
		  # "can't get final child's PID from pipe: EOF".
		  restrict_oom_score_adj = true
		  [plugins."io.containerd.grpc.v1.cri".containerd]
		    snapshotter = "overlayfs"
		    default_runtime_name = "runc"
		    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
		      runtime_type = "io.containerd.runc.v2"
		      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
		        SystemdCgroup = false
		  [plugins."io.containerd.grpc.v1.cri".cni]
		    bin_dir = "/usr/lib/cni"
		    conf_dir = "${conf}/cni"
	EOF
	# A bridge with host-local addresses; no ipMasq (nothing is NATed, and nothing routes out).
	cat >"${conf}/cni/10-aeropartners.conflist" <<-EOF
		{
		  "cniVersion": "1.0.0",
		  "name": "aeropartners",
		  "plugins": [
		    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
		     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$(pod_cidr "${name}")"}]],
		              "routes": [{"dst": "0.0.0.0/0"}]}},
		    {"type": "portmap", "capabilities": {"portMappings": true}}
		  ]
		}
	EOF
}

start_containerd() {
	local name=$1 dir
	dir=$(node_dir "${name}")
	log "${name}: starting containerd"
	write_containerd_config "${name}"
	start containerd "${dir}/run/containerd.pid" "${dir}/logs/containerd.log" \
		nsenter --target "$(holder_pid "${name}")" --net --mount -- containerd --config "${dir}/conf/containerd.toml"
	wait_started containerd "${dir}/run/containerd.pid" "${dir}/logs/containerd.log" 30 \
		in_node "${name}" ctr --address /run/containerd/containerd.sock version >/dev/null
}

# ctr_node NAME ARGS...: ctr in the worker containerd's k8s.io namespace (the one CRI uses).
ctr_node() {
	local name=$1
	shift
	in_node "${name}" ctr --address /run/containerd/containerd.sock -n k8s.io "$@"
}

# oci_archive REF ROOTFS_DIR ENTRYPOINT [USER]: a FROM-scratch image of ROOTFS_DIR's files as an
# OCI archive (printed). buildah keeps its storage under our directory (vfs: no mounts).
oci_archive() {
	local ref=$1 rootfs=$2 entrypoint=$3 user=${4:-65532:65532} storage=${CLUSTER_DIR}/buildah archive container
	local buildah=(buildah --root "${storage}/root" --runroot "${storage}/run" --storage-driver vfs)
	archive=${IMAGES}/$(printf '%s' "${ref}" | tr '/:' '__').tar
	mkdir -p "${IMAGES}"
	container=$("${buildah[@]}" from scratch)
	"${buildah[@]}" copy --quiet "${container}" "${rootfs}" / >/dev/null
	"${buildah[@]}" config --entrypoint "${entrypoint}" --user "${user}" "${container}"
	"${buildah[@]}" commit --quiet --rm "${container}" "${ref}" >/dev/null
	rm -f "${archive}"
	"${buildah[@]}" push --quiet "${ref}" "oci-archive:${archive}:${ref}"
	"${buildah[@]}" rmi --force "${ref}" >/dev/null
	printf '%s' "${archive}"
}

# import_everywhere ARCHIVE: into the containerd of every running worker.
import_everywhere() {
	local archive=$1 worker
	for worker in "${WORKERS[@]}"; do
		holder_pid "${worker}" >/dev/null 2>&1 || continue
		ctr_node "${worker}" images import "${archive}" >/dev/null
	done
	log "image $(basename "${archive}") ($(du -h "${archive}" | cut -f1)) imported into ${WORKERS[*]}"
}

build_pause_image() {
	local rootfs=${IMAGES}/pause-rootfs
	rm -rf "${rootfs}"
	mkdir -p "${rootfs}"
	gcc -static -O2 -o "${rootfs}/pause" "${SCRIPT_DIR}/e2e/pause.c"
	PAUSE_ARCHIVE=$(oci_archive "${PAUSE_IMAGE}" "${rootfs}" '["/pause"]')
}

write_kubelet_config() {
	local name=$1 conf
	conf=$(node_dir "${name}")/conf
	# No upstream resolver: pods get CoreDNS only, and nothing asks the VM's DNS.
	printf '# no upstream: CoreDNS answers cluster names only\noptions ndots:5\n' >"${conf}/resolv.conf"
	cat >"${conf}/kubelet.yaml" <<-EOF
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		cgroupDriver: cgroupfs
		# Its own cgroup root: two kubelets under one root take each other's pods for orphans.
		cgroupRoot: /${name}
		cgroupsPerQOS: true
		containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
		address: $(node_ip "${name}")
		readOnlyPort: 0
		healthzBindAddress: 127.0.0.1
		tlsCertFile: ${PKI}/kubelet-serving-${name}.crt
		tlsPrivateKeyFile: ${PKI}/kubelet-serving-${name}.key
		authentication:
		  anonymous: {enabled: false}
		  webhook: {enabled: true}
		  x509: {clientCAFile: ${PKI}/ca.crt}
		authorization: {mode: Webhook}
		clusterDomain: cluster.local
		clusterDNS: [${DNS_IP}]
		resolvConf: ${conf}/resolv.conf
		failSwapOn: false
		# Images cannot be pulled again here, so never collect them; and do not evict
		# pods for a disk that the rest of the VM fills.
		imageGCHighThresholdPercent: 100
		imageGCLowThresholdPercent: 99
		evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
		containerLogMaxSize: 10Mi
		containerLogMaxFiles: 2
		serializeImagePulls: false
	EOF
}

start_kubelet() {
	local name=$1 dir
	dir=$(node_dir "${name}")
	log "${name}: starting kubelet ($(zone "${name}"), pods $(pod_cidr "${name}"))"
	write_kubelet_config "${name}"
	make_cgroup_root "${name}"
	start kubelet "${dir}/run/kubelet.pid" "${dir}/logs/kubelet.log" \
		nsenter --target "$(holder_pid "${name}")" --net --mount -- "$(bin kubelet)" \
		--config="${dir}/conf/kubelet.yaml" \
		--kubeconfig="${CONF}/kubelet-${name}.kubeconfig" \
		--hostname-override="${name}" \
		--node-ip="$(node_ip "${name}")" \
		--node-labels="topology.kubernetes.io/zone=$(zone "${name}")" \
		--cert-dir="${dir}/pki"
}

node_ready() {
	[[ "$(kubectl_cluster get node "$1" \
		-o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

start_kube_proxy() {
	local name=$1 dir
	dir=$(node_dir "${name}")
	log "${name}: starting kube-proxy"
	cat >"${dir}/conf/kube-proxy.yaml" <<-EOF
		apiVersion: kubeproxy.config.k8s.io/v1alpha1
		kind: KubeProxyConfiguration
		mode: iptables
		clientConnection: {kubeconfig: ${CONF}/kube-proxy.kubeconfig}
		hostnameOverride: ${name}
		bindAddress: $(node_ip "${name}")
		# The whole pod range: traffic from any pod is cluster traffic.
		clusterCIDR: ${POD_CIDR}
		healthzBindAddress: 127.0.0.1:10256
		metricsBindAddress: 127.0.0.1:10249
		# Leave the VM's conntrack sysctls alone (kube-proxy would try to raise them).
		conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
	EOF
	start kube-proxy "${dir}/run/kube-proxy.pid" "${dir}/logs/kube-proxy.log" \
		nsenter --target "$(holder_pid "${name}")" --net -- "$(bin kube-proxy)" --config="${dir}/conf/kube-proxy.yaml"
}

# NetworkPolicy enforcement: the bridge CNI ignores policies, so kube-router runs its
# firewall only (no routing, no service proxy: kube-proxy does that) on each worker. It keeps
# per-pod iptables chains and ipsets in step with the pods and policies it watches. Traffic
# from the worker itself to its pods (kubelet probes, the e2e runner) is always allowed; traffic
# from another node arrives from that node's address (10.213.0.0/24) and is filtered like any
# outside client. Ready when its chain KUBE-ROUTER-FORWARD exists.
start_network_policy() {
	local name=$1 dir
	dir=$(node_dir "${name}")
	log "${name}: starting kube-router (NetworkPolicy)"
	start kube-router "${dir}/run/kube-router.pid" "${dir}/logs/kube-router.log" \
		nsenter --target "$(holder_pid "${name}")" --net -- "$(bin kube-router)" \
		--kubeconfig="${CONF}/kube-router.kubeconfig" \
		--hostname-override="${name}" \
		--run-firewall=true --run-router=false --run-service-proxy=false --run-loadbalancer=false \
		--service-cluster-ip-range="${SERVICE_CIDR}" \
		--metrics-port=0 --iptables-sync-period=1m
}

network_policy_ready() { in_netns "$1" iptables -w -n -L KUBE-ROUTER-FORWARD >/dev/null 2>&1; }

# start_worker NAME: namespaces, containerd (with the pause image), kubelet, kube-proxy; does
# not wait for Ready (workers start side by side).
start_worker() {
	local name=$1 dir
	dir=$(node_dir "${name}")
	mkdir -p "${dir}/conf" "${dir}/logs" "${dir}/run" "${dir}/pki"
	start_node_namespaces "${name}"
	mount_host_paths "${name}"
	start_containerd "${name}"
	ctr_node "${name}" images import "${PAUSE_ARCHIVE}" >/dev/null
	start_kubelet "${name}"
	start_kube_proxy "${name}"
}

# wait_worker NAME: the node Ready, then kube-router (it reads its Node object at start, and
# v2.1.0 panics when that is not there yet).
wait_worker() {
	local name=$1 dir
	dir=$(node_dir "${name}")
	wait_started kubelet "${dir}/run/kubelet.pid" "${dir}/logs/kubelet.log" 60 node_ready "${name}"
	start_network_policy "${name}"
	wait_started kube-router "${dir}/run/kube-router.pid" "${dir}/logs/kube-router.log" 60 \
		network_policy_ready "${name}"
}

# ---------------------------------------------------------------------------
# storage: Rancher's local-path-provisioner as the default StorageClass `standard`, as kind
# ships it: a PVC gets a directory on the node its pod runs on. The provisioner runs as a
# Deployment; its helper pods (which make and remove the directories) run a busybox shell.

build_storage_images() {
	local rootfs=${IMAGES}/local-path-rootfs helper=${IMAGES}/helper-rootfs
	rm -rf "${rootfs}" "${helper}"
	mkdir -p "${rootfs}/usr/local/bin" "${helper}/bin" "${helper}/tmp"
	cp "$(bin local-path-provisioner)" "${rootfs}/usr/local/bin/"
	import_everywhere "$(oci_archive localhost/aeropartners/local-path-provisioner:v0.0.30 \
		"${rootfs}" '["/usr/local/bin/local-path-provisioner"]' 0:0)"
	# Debian's static busybox: sh, mkdir, rm, chmod for the helper's scripts.
	cp /bin/busybox "${helper}/bin/busybox"
	local applet
	for applet in sh mkdir rm rmdir chmod ls cat; do
		ln -s busybox "${helper}/bin/${applet}"
	done
	import_everywhere "$(oci_archive localhost/aeropartners/local-path-helper:1 \
		"${helper}" '["/bin/sh"]' 0:0)"
}

start_storage() {
	log "starting local-path-provisioner (default StorageClass standard)"
	build_storage_images
	local paths='' worker
	for worker in "${WORKERS[@]}"; do
		paths+="${paths:+,}{\"node\":\"${worker}\",\"paths\":[\"/var/local-path-provisioner\"]}"
	done
	kubectl_cluster apply -f - >/dev/null <<-EOF
		apiVersion: v1
		kind: Namespace
		metadata: {name: local-path-storage}
		---
		apiVersion: v1
		kind: ServiceAccount
		metadata: {name: local-path-provisioner-service-account, namespace: local-path-storage}
		---
		apiVersion: rbac.authorization.k8s.io/v1
		kind: Role
		metadata: {name: local-path-provisioner-role, namespace: local-path-storage}
		rules:
		  - apiGroups: [""]
		    resources: [pods]
		    verbs: [get, list, watch, create, patch, update, delete]
		---
		apiVersion: rbac.authorization.k8s.io/v1
		kind: ClusterRole
		metadata: {name: local-path-provisioner-role}
		rules:
		  - apiGroups: [""]
		    resources: [nodes, persistentvolumeclaims, configmaps, pods, pods/log]
		    verbs: [get, list, watch]
		  - apiGroups: [""]
		    resources: [persistentvolumes]
		    verbs: [get, list, watch, create, patch, update, delete]
		  - apiGroups: [""]
		    resources: [events]
		    verbs: [create, patch]
		  - apiGroups: [storage.k8s.io]
		    resources: [storageclasses]
		    verbs: [get, list, watch]
		---
		apiVersion: rbac.authorization.k8s.io/v1
		kind: RoleBinding
		metadata: {name: local-path-provisioner-bind, namespace: local-path-storage}
		roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: local-path-provisioner-role}
		subjects: [{kind: ServiceAccount, name: local-path-provisioner-service-account, namespace: local-path-storage}]
		---
		apiVersion: rbac.authorization.k8s.io/v1
		kind: ClusterRoleBinding
		metadata: {name: local-path-provisioner-bind}
		roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: local-path-provisioner-role}
		subjects: [{kind: ServiceAccount, name: local-path-provisioner-service-account, namespace: local-path-storage}]
		---
		apiVersion: apps/v1
		kind: Deployment
		metadata: {name: local-path-provisioner, namespace: local-path-storage}
		spec:
		  replicas: 1
		  selector: {matchLabels: {app: local-path-provisioner}}
		  template:
		    metadata: {labels: {app: local-path-provisioner}}
		    spec:
		      serviceAccountName: local-path-provisioner-service-account
		      containers:
		        - name: local-path-provisioner
		          image: localhost/aeropartners/local-path-provisioner:v0.0.30
		          imagePullPolicy: Never
		          command: [local-path-provisioner, --debug, start, --config, /etc/config/config.json]
		          volumeMounts: [{name: config-volume, mountPath: /etc/config/}]
		          env:
		            - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
		            - {name: CONFIG_MOUNT_PATH, value: /etc/config/}
		      volumes: [{name: config-volume, configMap: {name: local-path-config}}]
		---
		apiVersion: storage.k8s.io/v1
		kind: StorageClass
		metadata:
		  name: standard
		  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
		provisioner: rancher.io/local-path
		volumeBindingMode: WaitForFirstConsumer
		reclaimPolicy: Delete
		---
		apiVersion: v1
		kind: ConfigMap
		metadata: {name: local-path-config, namespace: local-path-storage}
		data:
		  config.json: '{"nodePathMap": [${paths}]}'
		  setup: |-
		    #!/bin/sh
		    set -eu
		    mkdir -m 0777 -p "\$VOL_DIR"
		  teardown: |-
		    #!/bin/sh
		    set -eu
		    rm -rf "\$VOL_DIR"
		  helperPod.yaml: |-
		    apiVersion: v1
		    kind: Pod
		    metadata: {name: helper-pod}
		    spec:
		      priorityClassName: system-node-critical
		      tolerations: [{key: node.kubernetes.io/disk-pressure, operator: Exists, effect: NoSchedule}]
		      containers:
		        - name: helper-pod
		          image: localhost/aeropartners/local-path-helper:1
		          imagePullPolicy: Never
	EOF
}

# ---------------------------------------------------------------------------

wait_default_service_account() {
	local i
	for ((i = 0; i < 300; i++)); do
		kubectl_cluster -n default get serviceaccount default >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "no default ServiceAccount after 30 s; log: ${LOGS}/kube-controller-manager.log"
}

write_env() {
	printf 'nameserver %s\nsearch svc.cluster.local cluster.local\noptions ndots:5\n' "${DNS_IP}" \
		>"${CONF}/cluster-resolv.conf"
	local holders=() node
	for node in "${CONTROL_PLANE}" "${WORKERS[@]}"; do
		holders+=("${node}=$(holder_pid "${node}")")
	done
	{
		printf 'KUBECONFIG=%s\n' "${KUBECONFIG_FILE}"
		printf 'CONTROL_PLANE_IP=%s\n' "${CONTROL_PLANE_IP}"
		printf 'NODE_CIDR=%s\n' "${NODE_CIDR}"
		printf 'NODES="%s"\n' "${WORKERS[*]}"
		printf 'HOLDERS="%s"\n' "${holders[*]}"
		printf 'AUDIT_LOG=%s\n' "${LOGS}/audit.log"
	} >"${ENV_FILE}"
}

# The packages are installed by infra.sh (one place that keeps apt from starting daemons).
ensure_packages() {
	local p
	for p in "${NODE_PACKAGES[@]}"; do
		dpkg -s "$p" >/dev/null 2>&1 || {
			"${SCRIPT_DIR}/infra.sh" test-deps
			return 0
		}
	done
}

cmd_up() {
	init_paths
	[[ ${EUID} -eq 0 ]] || die "the cluster needs root (network and mount namespaces, containerd, iptables)"
	# A cluster an interrupted run left behind is stopped first (in its own process: `down`
	# takes the same lock).
	if holder_pid lab >/dev/null 2>&1; then
		log "a cluster from an earlier run is still up; stopping it first"
		"$0" down
	fi
	exec 9>"${CLUSTER_DIR}.lock"
	flock 9
	ensure_packages
	BIN_DIR=$("${SCRIPT_DIR}/k8s-tools.sh" build)
	local t0=${SECONDS} worker
	# A fresh cluster every time: nothing from an earlier run can make a test pass.
	rm -rf "${CLUSTER_DIR}"
	init_paths
	mkdir -p "${CONF}" "${LOGS}" "${RUN}" "${IMAGES}"
	printf '%s\n' "${WORKERS[@]}" >"${RUN}/workers"
	: >"${CREATED_FILE}"
	start_lab
	start_node_namespaces "${CONTROL_PLANE}"
	gen_pki
	start_etcd
	start_apiserver
	start_controller_manager
	start_scheduler
	start_coredns
	apply_kube_router_rbac
	build_pause_image
	for worker in "${WORKERS[@]}"; do
		start_worker "${worker}"
	done
	for worker in "${WORKERS[@]}"; do
		wait_worker "${worker}"
	done
	wait_default_service_account
	start_storage
	write_env
	log "cluster up in $((SECONDS - t0)) s: control plane ${CONTROL_PLANE_IP}, workers ${WORKERS[*]}"
	cat "${ENV_FILE}"
}

# ---------------------------------------------------------------------------
# down: each worker's node components first (so nothing restarts a container), then its pod
# processes, containerd and its shims; then the control plane; the namespaces go with their
# last process.

# kill_pod_processes NAME: every process in the worker's kubepods cgroups.
kill_pod_processes() {
	local name=$1 round pids dir
	dir=$(node_dir "${name}")
	if [[ -S "${dir}/host/run/containerd/containerd.sock" ]] && pid_alive "${dir}/run/containerd.pid" containerd; then
		local task
		for task in $(ctr_node "${name}" tasks ls -q 2>/dev/null || true); do
			ctr_node "${name}" tasks kill --all --signal SIGKILL "${task}" >/dev/null 2>&1 || true
		done
	fi
	for ((round = 0; round < 50; round++)); do
		# `|| true`: a cgroup that goes away during the walk makes find fail, and with
		# pipefail that would end `down` half-way.
		pids=$(find "/sys/fs/cgroup/pids/${name}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u || true)
		[[ -z "${pids}" ]] && break
		# shellcheck disable=SC2086 # one PID per word
		kill -KILL ${pids} 2>/dev/null || true
		sleep 0.1
	done
}

# A process lives in a network namespace (by its link).
in_namespace() { [[ "$(readlink "/proc/$2/ns/net" 2>/dev/null)" == "$1" ]]; }

# kill_namespace_members HOLDER: every process left in the holder's network namespace (shims,
# anything a crash left) but the holder: all of them were started by this script or by
# containerd for it.
kill_namespace_members() {
	local holder=$1 netns entry pid
	netns=$(readlink "/proc/${holder}/ns/net") || return 0
	for entry in /proc/[0-9]*; do
		pid=${entry#/proc/}
		[[ "${pid}" == "${holder}" || "${pid}" == "$$" || "${pid}" == "${BASHPID}" ]] && continue
		if in_namespace "${netns}" "${pid}"; then
			log "stopping $(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | cut -c1-80) (pid ${pid})"
			kill -KILL "${pid}" 2>/dev/null || true
		fi
	done
}

# remove_cgroups NAME: the worker's cgroup root in every hierarchy, deepest first (hugetlb is
# visible in its mount namespace only).
remove_cgroups() {
	local name=$1 left
	# Its own root and what is below it; not another worker's whose name it begins
	# (aeropartners-worker and aeropartners-worker2).
	in_node "${name}" find /sys/fs/cgroup -mindepth 2 -depth -type d \
		\( -path "/sys/fs/cgroup/*/${name}" -o -path "/sys/fs/cgroup/*/${name}/*" \) \
		-exec rmdir {} + 2>/dev/null || true
	rmdir /sys/fs/cgroup/unified/"${name}" 2>/dev/null || true
	# `|| true`: head closing the pipe early fails it, and with pipefail `down` would stop.
	left=$(in_node "${name}" find /sys/fs/cgroup -mindepth 2 -type d -path "/sys/fs/cgroup/*/${name}" 2>/dev/null | head -n 3 || true)
	[[ -z "${left}" ]] || log "warning: cgroups not removed: ${left//$'\n'/, }"
}

stop_worker() {
	local name=$1 dir holder=''
	dir=$(node_dir "${name}")
	holder=$(holder_pid "${name}" 2>/dev/null) || holder=''
	stop "${dir}/run/kubelet.pid" kubelet 10
	stop "${dir}/run/kube-proxy.pid" kube-proxy 5
	stop "${dir}/run/kube-router.pid" kube-router 5
	kill_pod_processes "${name}"
	stop "${dir}/run/containerd.pid" containerd 10
	if [[ -n "${holder}" ]]; then
		kill_namespace_members "${holder}"
		remove_cgroups "${name}"
		stop "${RUN}/${name}.holder.pid" sleep 5
	fi
}

# What `down` must leave: no process in the cluster's namespaces, no pod cgroup, no mount of
# ours.
verify_clean() {
	local entry left=() mounts netns name
	for netns in "$@"; do
		for entry in /proc/[0-9]*; do
			in_namespace "${netns}" "${entry#/proc/}" || continue
			running "${entry#/proc/}" && left+=("${entry#/proc/}")
		done
	done
	for name in "${WORKERS[@]}"; do
		[[ -d "/sys/fs/cgroup/pids/${name}" ]] && left+=("the cgroup /${name}")
	done
	mounts=$(awk -v dir="${CLUSTER_DIR}" 'index($2, dir) == 1 || $2 == "/sys/fs/cgroup/hugetlb"' /proc/self/mounts)
	if ((${#left[@]} > 0)) || [[ -n "${mounts}" ]]; then
		log "error: left behind: ${left[*]:-no process}; mounts ${mounts:-none}"
		return 1
	fi
	log "nothing left behind: no process in the cluster's namespaces or pod cgroups, no mount of ours"
}

cmd_down() {
	init_paths
	exec 9>"${CLUSTER_DIR}.lock"
	flock 9
	local namespaces=() node holder worker
	for node in lab "${CONTROL_PLANE}" "${WORKERS[@]}"; do
		holder=$(holder_pid "${node}" 2>/dev/null) || continue
		namespaces+=("$(readlink "/proc/${holder}/ns/net")")
	done
	BIN_DIR=$("${SCRIPT_DIR}/k8s-tools.sh" path)
	for worker in "${WORKERS[@]}"; do
		stop_worker "${worker}"
	done
	stop "${RUN}/coredns.pid" coredns 5
	stop "${RUN}/kube-scheduler.pid" kube-scheduler 5
	stop "${RUN}/kube-controller-manager.pid" kube-controller-manager 5
	# It takes 60 s to exit on SIGTERM with watches open; 5 s is plenty for a test cluster.
	stop "${RUN}/kube-apiserver.pid" kube-apiserver 5
	stop "${RUN}/etcd.pid" etcd 10
	for node in "${CONTROL_PLANE}" lab; do
		holder=$(holder_pid "${node}" 2>/dev/null) || continue
		kill_namespace_members "${holder}"
		stop "${RUN}/${node}.holder.pid" sleep 5
	done
	if [[ -f "${CREATED_FILE}" ]]; then
		local dir
		while read -r dir; do
			[[ -n "${dir}" ]] || continue
			rmdir "${dir}" 2>/dev/null || log "warning: ${dir} not removed (not empty?)"
		done < <(tac "${CREATED_FILE}" | awk '!seen[$0]++')
		rm -f "${CREATED_FILE}"
	fi
	rm -f "${ENV_FILE}"
	# The processes just killed may take a moment to leave the namespaces.
	local i
	for ((i = 0; i < 50; i++)); do
		verify_clean "${namespaces[@]}" 2>/dev/null && break
		sleep 0.1
	done
	verify_clean "${namespaces[@]}"
	log "cluster stopped"
}

cmd_status() {
	init_paths
	local n node dir
	report() {
		if pid_alive "$1" "$2"; then
			printf '%-48s running (pid %s)\n' "$3" "$(<"$1")"
		else
			printf '%-48s stopped\n' "$3"
		fi
	}
	report "${RUN}/lab.holder.pid" sleep "lab network"
	report "${RUN}/${CONTROL_PLANE}.holder.pid" sleep "${CONTROL_PLANE}"
	for n in etcd kube-apiserver kube-controller-manager kube-scheduler coredns; do
		report "${RUN}/${n}.pid" "$n" "  $n"
	done
	for node in "${WORKERS[@]}"; do
		dir=$(node_dir "${node}")
		report "${RUN}/${node}.holder.pid" sleep "${node}"
		for n in containerd kubelet kube-proxy kube-router; do
			report "${dir}/run/${n}.pid" "$n" "  $n"
		done
	done
	[[ -f "${ENV_FILE}" ]] && cat "${ENV_FILE}"
	return 0
}

# image REF BINARY: the binary, the shared libraries ldd lists and the dynamic loader, in a
# FROM-scratch image (the build `make test` already made, not a second static build).
cmd_image() {
	local ref=$1 binary=$2 rootfs lib
	init_paths
	holder_pid lab >/dev/null || die "the cluster is not running (scripts/k8s-cluster.sh up)"
	rootfs=${IMAGES}/$(basename "${binary}")-rootfs
	rm -rf "${rootfs}"
	mkdir -p "${rootfs}/usr/local/bin" "${rootfs}/tmp"
	chmod 1777 "${rootfs}/tmp"
	cp "${binary}" "${rootfs}/usr/local/bin/"
	for lib in $(ldd "${binary}" | grep -oE '/[^ ]+\.so[^ ]*'); do
		mkdir -p "${rootfs}$(dirname "${lib}")"
		cp -L "${lib}" "${rootfs}${lib}"
	done
	import_everywhere "$(oci_archive "${ref}" "${rootfs}" "[\"/usr/local/bin/$(basename "${binary}")\"]")"
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
image)
	[[ $# -eq 3 ]] || die "usage: $0 image REF BINARY"
	cmd_image "$2" "$3"
	;;
import)
	[[ $# -eq 2 ]] || die "usage: $0 import ARCHIVE"
	init_paths
	import_everywhere "$2"
	;;
exec)
	shift
	init_paths
	# In a mount namespace of its own whose /etc/resolv.conf names the cluster's DNS: the
	# command resolves Service names as a pod does, and never asks the VM's resolver.
	holder=$(holder_pid "${WORKERS[0]}") || die "the cluster is not running (scripts/k8s-cluster.sh up)"
	# shellcheck disable=SC2016 # expanded by the inner shell
	nsenter --target "${holder}" --net -- unshare --mount --propagation private \
		bash -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "${CONF}/cluster-resolv.conf" "$@"
	;;
env)
	init_paths
	[[ -f "${ENV_FILE}" ]] || die "the cluster is not running (scripts/k8s-cluster.sh up)"
	cat "${ENV_FILE}"
	;;
status) cmd_status ;;
*) die "usage: $0 up | down | image REF BINARY | import ARCHIVE | exec CMD... | env | status" ;;
esac
