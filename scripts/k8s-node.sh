#!/usr/bin/env bash
# A real single-node Kubernetes cluster, from binaries, for `make e2e`: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, containerd, kubelet,
# kube-proxy, kube-router (NetworkPolicy) and CoreDNS, one function per component (after
# Kubernetes' hack/local-up-cluster.sh).
#
#   scripts/k8s-node.sh up                  start the node, wait until it is Ready
#   scripts/k8s-node.sh down                stop everything by PID; leaves no namespace,
#                                           mount, iptables rule or cgroup behind
#   scripts/k8s-node.sh image REF BINARY    build a FROM-scratch image of BINARY and the
#                                           shared libraries it links, import it into the node
#   scripts/k8s-node.sh exec CMD...         run CMD in the node's network namespace
#   scripts/k8s-node.sh env                 print KUBECONFIG=, NODE_IP=, ...
#   scripts/k8s-node.sh status              what runs
#
# Where things live. Every address is inside a network namespace this script
# creates (a holder process made with `unshare --net --mount`), so no test
# traffic touches the VM's own interfaces and nothing routes or NATs outside:
#   node IP      10.213.0.1 on a port-less bridge `node0` (the API server, PostgreSQL,
#                Pulsar and CoreDNS listen there)
#   pods         10.244.0.0/24 on the CNI bridge `cni0`
#   services     10.96.0.0/16 (kube-proxy, iptables mode); kube-dns is 10.96.0.10
#   policies     kube-router's firewall (iptables + ipset) enforces NetworkPolicies, which
#                the bridge CNI alone ignores
# containerd and the kubelet also share a private mount namespace of the holder: the
# paths they insist on (/var/lib/kubelet, /var/lib/containerd, /run/containerd,
# /var/log/pods, /var/log/containers, /var/lib/cni, /run/netns) are bind mounts of
# directories under $K8S_NODE_DIR there, and every mount they make (overlay rootfs,
# projected volumes, pod network namespaces) disappears with that namespace.
#
# Why nsenter and not `ip netns exec`: the latter remounts /sys, which hides the
# cgroup hierarchies the kubelet needs, and `ip netns add` leaves /run/netns mounted.
#
# Environment knobs:
#   K8S_NODE_DIR     state, configs and logs (default: <repo>/target/e2e/node); wiped by `up`
#   AEROPARTNERS_CACHE  passed on to k8s-tools.sh
set -euo pipefail
shopt -s inherit_errexit

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "${SCRIPT_DIR}/.." && pwd -P)
# shellcheck source-path=SCRIPTDIR source=k8s-lib.sh
source "${SCRIPT_DIR}/k8s-lib.sh"

NODE_NAME=aeropartners-node
NODE_IP=10.213.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
DNS_IP=10.96.0.10
APISERVER_PORT=6443
PAUSE_IMAGE=localhost/aeropartners/pause:3.10
# Debian's packages the node needs (none of them is on a new machine); infra.sh test-deps
# installs them.
NODE_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack buildah ipset)
# The host paths containerd and the kubelet use, replaced by our own directories inside
# the node's mount namespace.
HOST_PATHS=(/var/lib/kubelet /var/lib/containerd /run/containerd /var/log/pods
	/var/log/containers /var/lib/cni /run/netns)

log() { printf '[k8s-node] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

init_paths() {
	NODE_DIR=${K8S_NODE_DIR:-${REPO_ROOT}/target/e2e/node}
	mkdir -p "${NODE_DIR}"
	NODE_DIR=$(cd -- "${NODE_DIR}" && pwd -P)
	PKI=${NODE_DIR}/pki
	CONF=${NODE_DIR}/conf
	LOGS=${NODE_DIR}/logs
	RUN=${NODE_DIR}/run
	HOST=${NODE_DIR}/host
	HOLDER_PIDFILE=${RUN}/holder.pid
	# Created by `up` outside our directory (mount points, the hugetlb hierarchy's
	# directory); `down` removes exactly these.
	CREATED_FILE=${RUN}/created-dirs
	ENV_FILE=${NODE_DIR}/env
	KUBECONFIG_FILE=${NODE_DIR}/kubeconfig
}

bin() { printf '%s/%s' "${BIN_DIR}" "$1"; }

# ---------------------------------------------------------------------------
# the namespaces

holder_pid() {
	pid_alive "${HOLDER_PIDFILE}" sleep || return 1
	cat "${HOLDER_PIDFILE}"
}

# in_netns CMD...: CMD in the node's network namespace only (PostgreSQL, Pulsar, the
# control plane, load generators, kubectl).
in_netns() {
	local holder
	holder=$(holder_pid) || die "the node is not running (scripts/k8s-node.sh up)"
	nsenter --target "${holder}" --net -- "$@"
}

# in_node CMD...: CMD in the node's network and mount namespaces (containerd, kubelet, ctr).
in_node() {
	local holder
	holder=$(holder_pid) || die "the node is not running (scripts/k8s-node.sh up)"
	nsenter --target "${holder}" --net --mount -- "$@"
}

# A process lives in the node's network namespace.
in_node_netns() {
	local holder=$1 pid=$2
	[[ "$(readlink "/proc/${pid}/ns/net" 2>/dev/null)" == "$(readlink "/proc/${holder}/ns/net")" ]]
}

start_namespaces() {
	mkdir -p "${RUN}" "${HOST}"
	: >"${CREATED_FILE}"
	log "creating the node's network and mount namespaces"
	# unshare execs sleep in the new namespaces (no fork needed for net and mount), so
	# the recorded PID is the process that keeps both alive.
	start holder "${HOLDER_PIDFILE}" "${LOGS}/holder.log" \
		unshare --net --mount --propagation private sleep infinity
	local i
	for ((i = 0; i < 50; i++)); do
		holder_pid >/dev/null && break
		sleep 0.1
	done
	holder_pid >/dev/null || die "the namespace holder did not start; log: ${LOGS}/holder.log"

	in_netns ip link set lo up
	in_netns ip link add node0 type bridge
	in_netns ip addr add "${NODE_IP}/24" dev node0
	in_netns ip link set node0 up
	# Locally originated traffic to a ClusterIP needs a route before kube-proxy's OUTPUT
	# DNAT rewrites it; there is no default route, so nothing leaves the namespace.
	in_netns ip route add "${SERVICE_CIDR}" dev node0
	in_netns sysctl -qw net.ipv4.ip_forward=1
	# Pod-to-Service-to-pod on the same bridge: the reply must pass iptables to be un-DNATed.
	in_netns sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true

	local path
	for path in "${HOST_PATHS[@]}"; do
		mkdir -p "${HOST}${path}"
		if [[ ! -d "${path}" ]]; then
			mkdir -p "${path}"
			printf '%s\n' "${path}" >>"${CREATED_FILE}"
		fi
		in_node mount --bind "${HOST}${path}" "${path}"
	done
	# The kubelet refuses to start without the hugetlb controller, which these VMs do not
	# mount; mounted in the node's mount namespace only.
	if [[ ! -d /sys/fs/cgroup/hugetlb ]]; then
		mkdir /sys/fs/cgroup/hugetlb
		printf '%s\n' /sys/fs/cgroup/hugetlb >>"${CREATED_FILE}"
	fi
	if ! in_node mountpoint -q /sys/fs/cgroup/hugetlb; then
		in_node mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
	fi
}

# ---------------------------------------------------------------------------
# certificates: one CA; a serving cert for the API server (node IP, the first service IP,
# the in-cluster names) and one for the kubelet; a client cert per component, named as
# Kubernetes' bootstrap RBAC expects (system:kube-controller-manager, system:kube-scheduler,
# system:kube-proxy, system:node:<name> in system:nodes); the admin in system:masters.

gen_pki() {
	log "generating the cluster's certificates"
	mkdir -p "${PKI}"
	gen_ca "${PKI}" aeropartners-node-ca
	issue_cert "${PKI}" apiserver /CN=kube-apiserver serverAuth \
		"IP:${NODE_IP}, IP:10.96.0.1, ${APISERVER_CLUSTER_SANS}"
	issue_cert "${PKI}" kubelet-serving "/CN=${NODE_NAME}" serverAuth "IP:${NODE_IP}, DNS:${NODE_NAME}"
	issue_cert "${PKI}" admin "/O=system:masters/CN=aeropartners-admin" clientAuth
	issue_cert "${PKI}" apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
	issue_cert "${PKI}" kube-controller-manager /CN=system:kube-controller-manager clientAuth
	issue_cert "${PKI}" kube-scheduler /CN=system:kube-scheduler clientAuth
	issue_cert "${PKI}" kube-proxy /CN=system:kube-proxy clientAuth
	issue_cert "${PKI}" kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}" clientAuth
	issue_cert "${PKI}" coredns /CN=aeropartners:coredns clientAuth
	issue_cert "${PKI}" kube-router /CN=aeropartners:kube-router clientAuth
	local user
	for user in admin kube-controller-manager kube-scheduler kube-proxy kubelet coredns kube-router; do
		write_kubeconfig "${CONF}/${user}.kubeconfig" "https://${NODE_IP}:${APISERVER_PORT}" "${PKI}" "${user}"
	done
	cp "${CONF}/admin.kubeconfig" "${KUBECONFIG_FILE}"
}

kubectl_node() { in_netns "$(bin kubectl)" --kubeconfig "${KUBECONFIG_FILE}" "$@"; }

# ---------------------------------------------------------------------------
# control plane

start_etcd() {
	log "starting etcd"
	mkdir -p "${NODE_DIR}/etcd"
	chmod 700 "${NODE_DIR}/etcd"
	# Loopback of the node's namespace; only the API server talks to it. --unsafe-no-fsync:
	# the cluster is disposable, and fsync on these disks slows every API write.
	start etcd "${RUN}/etcd.pid" "${LOGS}/etcd.log" nsenter --target "$(holder_pid)" --net -- \
		"$(bin etcd)" --name "${NODE_NAME}" --data-dir "${NODE_DIR}/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster "${NODE_NAME}=http://127.0.0.1:2380" --initial-cluster-state new \
		--unsafe-no-fsync --log-level warn
	wait_started etcd "${RUN}/etcd.pid" "${LOGS}/etcd.log" 30 in_netns_etcd_healthy
}

in_netns_etcd_healthy() {
	in_netns bash -c "$(declare -f etcd_healthy); etcd_healthy 127.0.0.1 2379"
}

start_apiserver() {
	log "starting kube-apiserver on https://${NODE_IP}:${APISERVER_PORT}"
	# --kubelet-preferred-address-types=InternalIP: otherwise it resolves the node's
	#   hostname through the VM's resolver.
	# --cert-dir: where it would write self-signed certs; the default is outside our dir.
	start kube-apiserver "${RUN}/kube-apiserver.pid" "${LOGS}/kube-apiserver.log" \
		nsenter --target "$(holder_pid)" --net -- "$(bin kube-apiserver)" \
		--bind-address="${NODE_IP}" --advertise-address="${NODE_IP}" --secure-port="${APISERVER_PORT}" \
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
		--profiling=false
	wait_started kube-apiserver "${RUN}/kube-apiserver.pid" "${LOGS}/kube-apiserver.log" 90 apiserver_ready
}

apiserver_ready() {
	kubectl_node --request-timeout=2s get --raw /readyz 2>/dev/null | grep -qx ok
}

start_controller_manager() {
	log "starting kube-controller-manager"
	# --use-service-account-credentials: each controller acts as its own ServiceAccount,
	#   whose bootstrap roles carry its permissions (as kubeadm runs it).
	# --root-ca-file: published to every namespace as kube-root-ca.crt for projected tokens.
	start kube-controller-manager "${RUN}/kube-controller-manager.pid" "${LOGS}/kube-controller-manager.log" \
		nsenter --target "$(holder_pid)" --net -- "$(bin kube-controller-manager)" \
		--kubeconfig="${CONF}/kube-controller-manager.kubeconfig" \
		--authentication-kubeconfig="${CONF}/kube-controller-manager.kubeconfig" \
		--authorization-kubeconfig="${CONF}/kube-controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false \
		--use-service-account-credentials=true \
		--service-account-private-key-file="${PKI}/sa.key" \
		--root-ca-file="${PKI}/ca.crt" \
		--cluster-name="${NODE_NAME}" \
		--controllers='*,-nodeipam' \
		--profiling=false
}

start_scheduler() {
	log "starting kube-scheduler"
	start kube-scheduler "${RUN}/kube-scheduler.pid" "${LOGS}/kube-scheduler.log" \
		nsenter --target "$(holder_pid)" --net -- "$(bin kube-scheduler)" \
		--kubeconfig="${CONF}/kube-scheduler.kubeconfig" \
		--authentication-kubeconfig="${CONF}/kube-scheduler.kubeconfig" \
		--authorization-kubeconfig="${CONF}/kube-scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false --profiling=false
}

# ---------------------------------------------------------------------------
# the node

write_containerd_config() {
	mkdir -p "${CONF}/cni"
	cat >"${CONF}/containerd.toml" <<-EOF
		# Written by scripts/k8s-node.sh. Paths are the defaults: inside the node's mount
		# namespace they are bind mounts of ${HOST}.
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
		    conf_dir = "${CONF}/cni"
	EOF
	# A bridge with host-local addresses; no ipMasq (nothing is NATed, and nothing routes out).
	cat >"${CONF}/cni/10-aeropartners.conflist" <<-EOF
		{
		  "cniVersion": "1.0.0",
		  "name": "aeropartners",
		  "plugins": [
		    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
		     "ipam": {"type": "host-local", "ranges": [[{"subnet": "${POD_CIDR}"}]],
		              "routes": [{"dst": "0.0.0.0/0"}]}},
		    {"type": "portmap", "capabilities": {"portMappings": true}}
		  ]
		}
	EOF
}

start_containerd() {
	log "starting containerd"
	write_containerd_config
	start containerd "${RUN}/containerd.pid" "${LOGS}/containerd.log" \
		nsenter --target "$(holder_pid)" --net --mount -- containerd --config "${CONF}/containerd.toml"
	wait_started containerd "${RUN}/containerd.pid" "${LOGS}/containerd.log" 30 \
		in_node ctr --address /run/containerd/containerd.sock version >/dev/null
}

# ctr_node ARGS...: ctr in containerd's k8s.io namespace (the one CRI uses).
ctr_node() { in_node ctr --address /run/containerd/containerd.sock -n k8s.io "$@"; }

# build_image REF ROOTFS_DIR ENTRYPOINT: a FROM-scratch image of ROOTFS_DIR's files,
# imported into the node. buildah keeps its storage under our directory (vfs: no mounts).
build_image() {
	local ref=$1 rootfs=$2 entrypoint=$3 storage=${NODE_DIR}/buildah archive container
	local buildah=(buildah --root "${storage}/root" --runroot "${storage}/run" --storage-driver vfs)
	archive=${NODE_DIR}/images/$(printf '%s' "${ref}" | tr '/:' '__').tar
	mkdir -p "${NODE_DIR}/images"
	container=$("${buildah[@]}" from scratch)
	"${buildah[@]}" copy --quiet "${container}" "${rootfs}" / >/dev/null
	"${buildah[@]}" config --entrypoint "${entrypoint}" --user 65532:65532 "${container}"
	"${buildah[@]}" commit --quiet --rm "${container}" "${ref}" >/dev/null
	rm -f "${archive}"
	"${buildah[@]}" push --quiet "${ref}" "oci-archive:${archive}:${ref}"
	"${buildah[@]}" rmi --force "${ref}" >/dev/null
	ctr_node images import "${archive}" >/dev/null
	log "image ${ref} ($(du -h "${archive}" | cut -f1)) imported into the node"
}

build_pause_image() {
	local rootfs=${NODE_DIR}/images/pause-rootfs
	rm -rf "${rootfs}"
	mkdir -p "${rootfs}"
	gcc -static -O2 -o "${rootfs}/pause" "${SCRIPT_DIR}/e2e/pause.c"
	build_image "${PAUSE_IMAGE}" "${rootfs}" '["/pause"]'
}

write_kubelet_config() {
	# No upstream resolver: pods get CoreDNS only, and nothing asks the VM's DNS.
	printf '# no upstream: CoreDNS answers cluster names only\noptions ndots:5\n' >"${CONF}/resolv.conf"
	cat >"${CONF}/kubelet.yaml" <<-EOF
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		cgroupDriver: cgroupfs
		containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
		address: ${NODE_IP}
		readOnlyPort: 0
		healthzBindAddress: 127.0.0.1
		tlsCertFile: ${PKI}/kubelet-serving.crt
		tlsPrivateKeyFile: ${PKI}/kubelet-serving.key
		authentication:
		  anonymous: {enabled: false}
		  webhook: {enabled: true}
		  x509: {clientCAFile: ${PKI}/ca.crt}
		authorization: {mode: Webhook}
		clusterDomain: cluster.local
		clusterDNS: [${DNS_IP}]
		resolvConf: ${CONF}/resolv.conf
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
	log "starting kubelet"
	write_kubelet_config
	start kubelet "${RUN}/kubelet.pid" "${LOGS}/kubelet.log" \
		nsenter --target "$(holder_pid)" --net --mount -- "$(bin kubelet)" \
		--config="${CONF}/kubelet.yaml" \
		--kubeconfig="${CONF}/kubelet.kubeconfig" \
		--hostname-override="${NODE_NAME}" \
		--node-ip="${NODE_IP}" \
		--cert-dir="${PKI}/kubelet"
	wait_started kubelet "${RUN}/kubelet.pid" "${LOGS}/kubelet.log" 60 node_ready
}

node_ready() {
	[[ "$(kubectl_node get node "${NODE_NAME}" \
		-o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

start_kube_proxy() {
	log "starting kube-proxy"
	cat >"${CONF}/kube-proxy.yaml" <<-EOF
		apiVersion: kubeproxy.config.k8s.io/v1alpha1
		kind: KubeProxyConfiguration
		mode: iptables
		clientConnection: {kubeconfig: ${CONF}/kube-proxy.kubeconfig}
		hostnameOverride: ${NODE_NAME}
		bindAddress: ${NODE_IP}
		clusterCIDR: ${POD_CIDR}
		healthzBindAddress: 127.0.0.1:10256
		metricsBindAddress: 127.0.0.1:10249
		# Leave the VM's conntrack sysctls alone (kube-proxy would try to raise them).
		conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
	EOF
	start kube-proxy "${RUN}/kube-proxy.pid" "${LOGS}/kube-proxy.log" \
		nsenter --target "$(holder_pid)" --net -- "$(bin kube-proxy)" --config="${CONF}/kube-proxy.yaml"
}

# NetworkPolicy enforcement: the bridge CNI ignores policies, so kube-router runs its
# firewall only (no routing, no service proxy: kube-proxy does that) in the node's network
# namespace. It keeps per-pod iptables chains and ipsets in step with the pods and policies
# it watches, as the user aeropartners:kube-router with read-only rights. Traffic from the
# node itself to a pod (kubelet probes, the e2e runner) is always allowed; only traffic
# between pods is filtered. Ready when its chain KUBE-ROUTER-FORWARD exists. (Its
# --cleanup-config panics in v2.1.0; nothing needs it: its rules go with the namespace.)
start_network_policy() {
	log "starting kube-router (NetworkPolicy)"
	kubectl_node apply -f - >/dev/null <<-EOF
		apiVersion: rbac.authorization.k8s.io/v1
		kind: ClusterRole
		metadata: {name: "aeropartners:kube-router"}
		rules:
		  - apiGroups: [""]
		    resources: [namespaces, pods, services, nodes, endpoints]
		    verbs: [get, list, watch]
		  - apiGroups: [networking.k8s.io]
		    resources: [networkpolicies]
		    verbs: [list, watch]
		  - apiGroups: [discovery.k8s.io]
		    resources: [endpointslices]
		    verbs: [list, watch]
		---
		apiVersion: rbac.authorization.k8s.io/v1
		kind: ClusterRoleBinding
		metadata: {name: "aeropartners:kube-router"}
		roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "aeropartners:kube-router"}
		subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "aeropartners:kube-router"}]
	EOF
	start kube-router "${RUN}/kube-router.pid" "${LOGS}/kube-router.log" \
		nsenter --target "$(holder_pid)" --net -- "$(bin kube-router)" \
		--kubeconfig="${CONF}/kube-router.kubeconfig" \
		--hostname-override="${NODE_NAME}" \
		--run-firewall=true --run-router=false --run-service-proxy=false --run-loadbalancer=false \
		--service-cluster-ip-range="${SERVICE_CIDR}" \
		--metrics-port=0 --iptables-sync-period=1m
	wait_started kube-router "${RUN}/kube-router.pid" "${LOGS}/kube-router.log" 60 network_policy_ready
}

network_policy_ready() { in_netns iptables -w -n -L KUBE-ROUTER-FORWARD >/dev/null 2>&1; }

# CoreDNS as a node process on the node IP, behind the usual kube-dns Service (a
# selector-less Service + EndpointSlice). No `forward`: names outside the cluster fail
# here instead of reaching the VM's resolver.
start_coredns() {
	log "starting CoreDNS"
	kubectl_node apply -f - >/dev/null <<-EOF
		apiVersion: rbac.authorization.k8s.io/v1
		kind: ClusterRole
		metadata: {name: "aeropartners:coredns"}
		rules:
		  - apiGroups: [""]
		    resources: [services, namespaces, pods]
		    verbs: [list, watch]
		  - apiGroups: [discovery.k8s.io]
		    resources: [endpointslices]
		    verbs: [list, watch]
		---
		apiVersion: rbac.authorization.k8s.io/v1
		kind: ClusterRoleBinding
		metadata: {name: "aeropartners:coredns"}
		roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "aeropartners:coredns"}
		subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "aeropartners:coredns"}]
		---
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
		  name: kube-dns-node
		  namespace: kube-system
		  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: aeropartners-e2e}
		addressType: IPv4
		endpoints: [{addresses: ["${NODE_IP}"]}]
		ports:
		  - {name: dns, port: 53, protocol: UDP}
		  - {name: dns-tcp, port: 53, protocol: TCP}
	EOF
	cat >"${CONF}/Corefile" <<-EOF
		.:53 {
		    bind ${NODE_IP}
		    errors
		    health 127.0.0.1:8080
		    kubernetes cluster.local in-addr.arpa ip6.arpa {
		        kubeconfig ${CONF}/coredns.kubeconfig
		        pods insecure
		        fallthrough in-addr.arpa ip6.arpa
		    }
		    cache 30
		}
	EOF
	start coredns "${RUN}/coredns.pid" "${LOGS}/coredns.log" \
		nsenter --target "$(holder_pid)" --net -- "$(bin coredns)" -conf "${CONF}/Corefile"
}

wait_default_service_account() {
	local i
	for ((i = 0; i < 300; i++)); do
		kubectl_node -n default get serviceaccount default >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "no default ServiceAccount after 30 s; log: ${LOGS}/kube-controller-manager.log"
}

write_env() {
	printf 'KUBECONFIG=%s\nNODE_IP=%s\nNODE_NAME=%s\nNODE_HOLDER_PID=%s\n' \
		"${KUBECONFIG_FILE}" "${NODE_IP}" "${NODE_NAME}" "$(holder_pid)" >"${ENV_FILE}"
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
	[[ ${EUID} -eq 0 ]] || die "the node needs root (network and mount namespaces, containerd, iptables)"
	# A node an interrupted run left behind is stopped first (in its own process: `down`
	# takes the same lock).
	if holder_pid >/dev/null 2>&1; then
		log "a node from an earlier run is still up (holder $(holder_pid)); stopping it first"
		"$0" down
	fi
	exec 9>"${NODE_DIR}.lock"
	flock 9
	ensure_packages
	BIN_DIR=$("${SCRIPT_DIR}/k8s-tools.sh" build)
	local t0=${SECONDS}
	# A fresh cluster every time: nothing from an earlier run can make a test pass.
	rm -rf "${NODE_DIR}"
	mkdir -p "${NODE_DIR}" "${CONF}" "${LOGS}" "${RUN}"
	start_namespaces
	gen_pki
	start_etcd
	start_apiserver
	start_controller_manager
	start_scheduler
	start_containerd
	build_pause_image
	start_kubelet
	start_kube_proxy
	start_network_policy
	start_coredns
	wait_default_service_account
	write_env
	log "node ${NODE_NAME} Ready in $((SECONDS - t0)) s (API server https://${NODE_IP}:${APISERVER_PORT})"
	cat "${ENV_FILE}"
}

# ---------------------------------------------------------------------------
# down: node components first (so nothing restarts a container), then every pod process,
# containerd and its shims, the control plane; the namespaces go with their last process.

kill_pod_processes() {
	local round pids
	if [[ -S "${HOST}/run/containerd/containerd.sock" ]] && pid_alive "${RUN}/containerd.pid" containerd; then
		local task
		for task in $(ctr_node tasks ls -q 2>/dev/null || true); do
			ctr_node tasks kill --all --signal SIGKILL "${task}" >/dev/null 2>&1 || true
		done
	fi
	# Whatever a task list missed: every process in a kubepods cgroup.
	for ((round = 0; round < 50; round++)); do
		# `|| true`: a cgroup that goes away during the walk makes find fail, and with
		# pipefail that would end `down` half-way (it did once, leaving the node running).
		pids=$(find /sys/fs/cgroup/pids/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u || true)
		[[ -z "${pids}" ]] && break
		# shellcheck disable=SC2086 # one PID per word
		kill -KILL ${pids} 2>/dev/null || true
		sleep 0.1
	done
}

# Every process left in the node's network namespace (shims, anything a crash left), but
# the holder: all of them were started by this script or by containerd for it.
kill_namespace_members() {
	local holder=$1 entry pid
	for entry in /proc/[0-9]*; do
		pid=${entry#/proc/}
		[[ "${pid}" == "${holder}" || "${pid}" == "$$" || "${pid}" == "${BASHPID}" ]] && continue
		if in_node_netns "${holder}" "${pid}"; then
			log "stopping $(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | cut -c1-80) (pid ${pid})"
			kill -KILL "${pid}" 2>/dev/null || true
		fi
	done
}

# kubepods cgroups the kubelet and runc created, deepest first, in every hierarchy
# (hugetlb is visible in the node's mount namespace only).
remove_cgroups() {
	in_node find /sys/fs/cgroup -mindepth 2 -depth -type d -path '*/kubepods*' -exec rmdir {} + 2>/dev/null || true
	in_node find /sys/fs/cgroup -mindepth 2 -type d -path '*/kubepods*' 2>/dev/null | head -n 3 |
		while read -r left; do log "warning: cgroup ${left} could not be removed"; done
}

# What `down` must leave: no process in the node's network namespace, no mount of ours.
verify_clean() {
	local netns=$1 entry left=() mounts
	if [[ -n "${netns}" ]]; then
		for entry in /proc/[0-9]*; do
			[[ "$(readlink "${entry}/ns/net" 2>/dev/null)" == "${netns}" ]] || continue
			running "${entry#/proc/}" && left+=("${entry#/proc/}")
		done
	fi
	mounts=$(awk -v dir="${NODE_DIR}" 'index($2, dir) == 1 || $2 == "/sys/fs/cgroup/hugetlb"' /proc/self/mounts)
	# Containers live in namespaces of their own; the kubepods cgroups are gone only once
	# the last of their processes is.
	if [[ -d /sys/fs/cgroup/pids/kubepods ]]; then
		left+=("the kubepods cgroup")
	fi
	if ((${#left[@]} > 0)) || [[ -n "${mounts}" ]]; then
		log "error: left behind: processes ${left[*]:-none}; mounts ${mounts:-none}"
		return 1
	fi
	log "nothing left behind: no process in the node's namespaces or pod cgroups, no mount of ours"
}

cmd_down() {
	init_paths
	exec 9>"${NODE_DIR}.lock"
	flock 9
	local holder='' netns=''
	holder=$(holder_pid 2>/dev/null) || holder=''
	[[ -z "${holder}" ]] || netns=$(readlink "/proc/${holder}/ns/net") || netns=''
	BIN_DIR=$("${SCRIPT_DIR}/k8s-tools.sh" path)
	stop "${RUN}/kubelet.pid" kubelet 10
	stop "${RUN}/kube-proxy.pid" kube-proxy 5
	stop "${RUN}/kube-router.pid" kube-router 5
	stop "${RUN}/coredns.pid" coredns 5
	kill_pod_processes
	stop "${RUN}/containerd.pid" containerd 10
	stop "${RUN}/kube-scheduler.pid" kube-scheduler 5
	stop "${RUN}/kube-controller-manager.pid" kube-controller-manager 5
	# It takes 60 s to exit on SIGTERM with watches open; 5 s is plenty for a test cluster.
	stop "${RUN}/kube-apiserver.pid" kube-apiserver 5
	stop "${RUN}/etcd.pid" etcd 10
	if [[ -n "${holder}" ]]; then
		kill_namespace_members "${holder}"
		remove_cgroups
		stop "${HOLDER_PIDFILE}" sleep 5
	fi
	if [[ -f "${CREATED_FILE}" ]]; then
		local dir
		while read -r dir; do
			[[ -n "${dir}" ]] || continue
			rmdir "${dir}" 2>/dev/null || log "warning: ${dir} not removed (not empty?)"
		done < <(tac "${CREATED_FILE}")
		rm -f "${CREATED_FILE}"
	fi
	rm -f "${ENV_FILE}"
	# The processes just killed may take a moment to leave the namespace.
	local i
	for ((i = 0; i < 50; i++)); do
		verify_clean "${netns}" 2>/dev/null && break
		sleep 0.1
	done
	verify_clean "${netns}"
	log "node stopped"
}

cmd_status() {
	init_paths
	local n
	for n in holder etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy kube-router coredns; do
		local name=$n
		[[ $n == holder ]] && name='sleep'
		if pid_alive "${RUN}/${n}.pid" "${name}"; then
			printf '%-24s running (pid %s)\n' "$n" "$(<"${RUN}/${n}.pid")"
		else
			printf '%-24s stopped\n' "$n"
		fi
	done
	[[ -f "${ENV_FILE}" ]] && cat "${ENV_FILE}"
	return 0
}

# image REF BINARY: the binary, the shared libraries ldd lists and the dynamic loader, in a
# FROM-scratch image (the build `make test` already made, not a second static build).
cmd_image() {
	local ref=$1 binary=$2 rootfs lib
	init_paths
	holder_pid >/dev/null || die "the node is not running (scripts/k8s-node.sh up)"
	rootfs=${NODE_DIR}/images/$(basename "${binary}")-rootfs
	rm -rf "${rootfs}"
	mkdir -p "${rootfs}/usr/local/bin" "${rootfs}/tmp"
	chmod 1777 "${rootfs}/tmp"
	cp "${binary}" "${rootfs}/usr/local/bin/"
	for lib in $(ldd "${binary}" | grep -oE '/[^ ]+\.so[^ ]*'); do
		mkdir -p "${rootfs}$(dirname "${lib}")"
		cp -L "${lib}" "${rootfs}${lib}"
	done
	build_image "${ref}" "${rootfs}" "[\"/usr/local/bin/$(basename "${binary}")\"]"
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
image)
	[[ $# -eq 3 ]] || die "usage: $0 image REF BINARY"
	cmd_image "$2" "$3"
	;;
exec)
	shift
	init_paths
	in_netns "$@"
	;;
env)
	init_paths
	[[ -f "${ENV_FILE}" ]] || die "the node is not running (scripts/k8s-node.sh up)"
	cat "${ENV_FILE}"
	;;
status) cmd_status ;;
*) die "usage: $0 up | down | image REF BINARY | exec CMD... | env | status" ;;
esac
