#!/usr/bin/env bash
# Build (once) the Kubernetes tools the operator tests need and cache them
# outside the repository:
#
#   scripts/k8s-tools.sh [build]   build what is missing, print where the binaries are
#   scripts/k8s-tools.sh path      print the bin dir only (no build, no network):
#                                  export PATH="$(scripts/k8s-tools.sh path):$PATH"
#   scripts/k8s-tools.sh versions  print the pinned versions
#   scripts/k8s-tools.sh latest    ask the Go module proxy for the newest patches
#                                  (to update the pins below; not used by `build`)
#
# Binaries, in ${AEROPARTNERS_CACHE:-~/.cache/aeropartners}/k8s/<k8s version>/bin:
#   kube-apiserver, kubectl                 the operator and chart tests (API server only)
#   kubelet, kube-proxy, kube-controller-manager, kube-scheduler
#                                           the cluster of `make e2e`
#   etcd (3.5), helm (3.19), coredns (1.14)
#   kube-router (2.1)                       each node's NetworkPolicy controller (firewall
#                                           only; the bridge CNI enforces no policy)
#   local-path-provisioner (0.0.30)         the e2e cluster's default StorageClass (as kind's)
#
# Why build from source: these machines have no Docker (so no kind) and reach
# only package registries, not GitHub release downloads or dl.k8s.io. The Go
# module proxy is such a registry and holds every module needed. Debian's etcd
# (3.4) is too old for kube-apiserver >= 1.31 and Debian's kubectl is not 1.34.
#
# The first build takes 15-30 min on 2 cores (kube-apiserver is most of it);
# afterwards every binary that exists is skipped, so the fast path runs no Go
# command at all and takes well under a second. Concurrent runs are serialised
# by a lock so two `make` targets cannot both start a 20-minute build.
#
# Environment knobs:
#   AEROPARTNERS_CACHE  cache root (default: ~/.cache/aeropartners)
#   K8S_VERSION, ETCD_VERSION, HELM_VERSION  override the pins (a different
#                       K8S_VERSION gets its own cache dir)
set -euo pipefail
# A failing `go get` inside $(k8s_wrapper) must stop the script too.
shopt -s inherit_errexit

# Pinned, not resolved at run time: the fast path must not touch the network,
# and every machine must build the same thing. Newest patches on the proxy when
# this was written (`scripts/k8s-tools.sh latest` shows the current ones).
K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.5.35}
HELM_VERSION=${HELM_VERSION:-v3.19.5}
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
# The only version the module proxy serves whole (v0.0.31 and v0.0.32 are refused).
LOCAL_PATH_PROVISIONER_VERSION=v0.0.30
# kube-router's version is the one in scripts/kube-router/go.mod (with its go.sum: the
# dependencies are raised above what v2.1.0 asks for, for known CVEs). Only the ldflags
# below repeat it.
KUBE_ROUTER_VERSION=v2.1.0

CACHE_ROOT=${AEROPARTNERS_CACHE:-${HOME}/.cache/aeropartners}
K8S_CACHE=${CACHE_ROOT}/k8s/${K8S_VERSION}
BIN_DIR=${K8S_CACHE}/bin
SRC_DIR=${K8S_CACHE}/src

# k8s.io/kubernetes v1.X.Y publishes its staging repositories as v0.X.Y.
K8S_MINOR_PATCH=${K8S_VERSION#v1.}         # 34.4
STAGING_VERSION=v0.${K8S_MINOR_PATCH}      # v0.34.4
K8S_MAJOR=1
K8S_MINOR=${K8S_MINOR_PATCH%%.*}           # 34

# k8s.io/kubernetes's own go.mod replaces these with ../staging/src/... paths.
# Replace directives of a dependency are ignored, so a wrapper module must
# repeat them with real versions or `go` cannot resolve v0.0.0 requirements.
STAGING_MODULES=(
	api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
	cloud-provider cluster-bootstrap code-generator component-base
	component-helpers controller-manager cri-api cri-client csi-translation-lib
	dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
	kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
	mount-utils pod-security-admission sample-apiserver sample-cli-plugin
	sample-controller
)

# Every command built from the k8s.io/kubernetes wrapper module.
K8S_COMMANDS=(kube-apiserver kubectl kubelet kube-proxy kube-controller-manager kube-scheduler)
TOOLS=("${K8S_COMMANDS[@]}" etcd helm coredns kube-router local-path-provisioner)
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)

log() { printf '[k8s-tools] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# The Go settings every build uses:
#  GOTOOLCHAIN=local  never download another Go toolchain (only the module
#                     proxy is reachable, and the installed Go is new enough);
#  CGO_ENABLED=0      static binaries, no C toolchain or libc dependency;
#  GOFLAGS=-mod=mod   let `go build` complete go.sum in the wrapper modules.
go_env() {
	env GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod "$@"
}

all_present() {
	local t
	for t in "${TOOLS[@]}"; do
		present "$t" || return 1
	done
}

# Whether tool $1 is built and current. kube-router's version lives in its wrapper module,
# not in the cache path: a binary built from another go.mod/go.sum is out of date.
present() {
	[[ -x "${BIN_DIR}/$1" ]] || return 1
	if [[ "$1" == kube-router ]]; then
		[[ "$(cat "${BIN_DIR}/kube-router.module" 2>/dev/null)" == "$(kube_router_module)" ]] || return 1
	fi
}

kube_router_module() {
	cat "${SCRIPT_DIR}/kube-router/go.mod" "${SCRIPT_DIR}/kube-router/go.sum" | sha256sum | cut -d' ' -f1
}

# Seconds since the epoch with sub-second precision, for the build timings.
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }

# ---------------------------------------------------------------------------
# kube-apiserver and kubectl: one wrapper module, so both share one dependency
# resolution and one build cache.

k8s_wrapper() {
	local dir=${SRC_DIR}/kubernetes m c
	local packages=()
	for c in "${K8S_COMMANDS[@]}"; do
		packages+=("k8s.io/kubernetes/cmd/${c}@${K8S_VERSION}")
	done
	# .ready records the commands resolved; a cache made for fewer commands
	# (before the node components were added) is resolved again.
	if [[ -f "${dir}/.ready" && "$(cat "${dir}/.ready")" == "${K8S_COMMANDS[*]}" ]]; then
		printf '%s\n' "${dir}"
		return 0
	fi
	rm -rf "${dir}"
	mkdir -p "${dir}"
	{
		printf 'module aeropartners.local/k8s-tools\n\ngo 1.24.0\n\n'
		printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "${K8S_VERSION}"
		for m in "${STAGING_MODULES[@]}"; do
			printf '\tk8s.io/%s => k8s.io/%s %s\n' "$m" "$m" "${STAGING_VERSION}"
		done
		printf ')\n'
	} >"${dir}/go.mod"
	log "resolving k8s.io/kubernetes ${K8S_VERSION} (staging modules ${STAGING_VERSION})"
	# `go get` of the command packages pulls in exactly their dependencies and
	# writes go.sum; the module itself has no Go files of its own.
	(cd "${dir}" && go_env go get "${packages[@]}") >&2
	printf '%s' "${K8S_COMMANDS[*]}" >"${dir}/.ready"
	printf '%s\n' "${dir}"
}

build_k8s() {
	local name=$1 dir ldflags pkg v
	dir=$(k8s_wrapper)
	# Without these the binaries report v0.0.0-master: `kubectl version` shows
	# a nonsense server version and Helm's `kubeVersion: >=1.2x` checks fail.
	# The apiserver reports component-base's copy, kubectl client-go's.
	ldflags="-s -w"
	for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
		for v in "gitVersion=${K8S_VERSION}" "gitMajor=${K8S_MAJOR}" "gitMinor=${K8S_MINOR}" \
			"gitTreeState=clean" "buildDate=1970-01-01T00:00:00Z"; do
			ldflags+=" -X ${pkg}.${v}"
		done
	done
	# selinux,notest: the tags Kubernetes' own release build uses (hack/lib/golang.sh).
	(cd "${dir}" && go_env go build -trimpath -tags selinux,notest -ldflags "${ldflags}" \
		-o "${BIN_DIR}/.${name}.tmp" "k8s.io/kubernetes/cmd/${name}") >&2
}

# ---------------------------------------------------------------------------
# etcd: its server module is the etcd main package. `go install ...@version`
# refuses it (server/go.mod has replace directives), hence a wrapper module.

build_etcd() {
	local dir=${SRC_DIR}/etcd-${ETCD_VERSION}
	if [[ ! -f "${dir}/.ready" ]]; then
		rm -rf "${dir}"
		mkdir -p "${dir}"
		printf 'module aeropartners.local/etcd-tools\n\ngo 1.23\n' >"${dir}/go.mod"
		(cd "${dir}" && go_env go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}") >&2
		touch "${dir}/.ready"
	fi
	(cd "${dir}" && go_env go build -trimpath \
		-ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" \
		-o "${BIN_DIR}/.etcd.tmp" go.etcd.io/etcd/server/v3) >&2
}

# ---------------------------------------------------------------------------
# helm: a plain `go install` works. GOFLAGS must not carry -mod=mod here:
# `go install pkg@version` runs outside any main module and rejects it.

build_helm() {
	local gobin=${SRC_DIR}/helm-bin
	rm -rf "${gobin}"
	mkdir -p "${gobin}"
	# Without the version helm prints v3.19+unreleased and charts that check
	# the Helm version misbehave.
	env GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="${gobin}" go install -trimpath \
		-ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
		"helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
	mv "${gobin}/helm" "${BIN_DIR}/.helm.tmp"
	rm -rf "${gobin}"
}

# ---------------------------------------------------------------------------
# CoreDNS: a plain `go install`, like helm. The node runs it without `forward`,
# so no query ever leaves for the VM's resolver.

build_coredns() {
	local gobin=${SRC_DIR}/coredns-bin
	rm -rf "${gobin}"
	mkdir -p "${gobin}"
	env GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="${gobin}" go install -trimpath \
		-ldflags "-s -w" "github.com/coredns/coredns@${COREDNS_VERSION}" >&2
	mv "${gobin}/coredns" "${BIN_DIR}/.coredns.tmp"
	rm -rf "${gobin}"
}

# ---------------------------------------------------------------------------
# kube-router: the node's NetworkPolicy controller (its firewall part only). v2.1.0 is the
# only version the module proxy serves; its dependencies are pinned higher than it asks in
# the wrapper module scripts/kube-router (go.mod + go.sum, committed, so every machine
# builds the same thing). The module is copied out of the repository first: -mod=mod may
# write to go.mod/go.sum, and the repository must stay as committed. About 85 MB of
# modules and 2.5 min of compiling on 2 cores with an empty Go cache.

build_kube_router() {
	local dir=${SRC_DIR}/kube-router
	rm -rf "${dir}"
	mkdir -p "${dir}"
	cp "${SCRIPT_DIR}/kube-router/go.mod" "${SCRIPT_DIR}/kube-router/go.sum" \
		"${SCRIPT_DIR}/kube-router/tools.go" "${dir}/"
	(cd "${dir}" && go_env go build -trimpath \
		-ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=${KUBE_ROUTER_VERSION}" \
		-o "${BIN_DIR}/.kube-router.tmp" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router) >&2
	kube_router_module >"${BIN_DIR}/kube-router.module"
}

# ---------------------------------------------------------------------------
# local-path-provisioner: the e2e cluster's default StorageClass, as kind ships it. A plain
# `go install` (about 1.5 min on 2 cores with an empty Go cache, a 43 MB static binary).

build_local_path_provisioner() {
	local gobin=${SRC_DIR}/local-path-provisioner-bin
	rm -rf "${gobin}"
	mkdir -p "${gobin}"
	env GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="${gobin}" go install -trimpath -ldflags "-s -w" \
		"github.com/rancher/local-path-provisioner@${LOCAL_PATH_PROVISIONER_VERSION}" >&2
	mv "${gobin}/local-path-provisioner" "${BIN_DIR}/.local-path-provisioner.tmp"
	rm -rf "${gobin}"
}

# ---------------------------------------------------------------------------

build_all() {
	if all_present; then
		report
		return 0
	fi
	command -v go >/dev/null || die "go is not installed (apt-get install golang-go, or a newer Go)"
	mkdir -p "${BIN_DIR}" "${SRC_DIR}"
	# One build at a time per cache: a second caller waits, then finds the
	# binaries present and returns at once.
	exec 9>"${K8S_CACHE}/.lock"
	if ! flock -n 9; then
		log "another build holds ${K8S_CACHE}/.lock; waiting for it"
		flock 9
	fi
	local t start missing=() n=0
	for t in "${TOOLS[@]}"; do
		present "$t" || missing+=("${t}")
	done
	if ((${#missing[@]} > 0)); then
		# Measured on a 2-core VM with an empty Go cache: about 5 min for the API server's
		# tools, 2 to 9 min for the node's, 1.5 min for CoreDNS. Later runs find them cached.
		log "building ${#missing[@]} Kubernetes binaries from source, once: ${missing[*]} (on 2 cores roughly 10 to 15 min in all with an empty Go cache; cached in ${K8S_CACHE})"
	fi
	for t in "${missing[@]}"; do
		n=$((n + 1))
		log "building ${t} (${n} of ${#missing[@]}; kube-apiserver takes longest)"
		start=$(now)
		case "$t" in
		etcd) build_etcd ;;
		helm) build_helm ;;
		coredns) build_coredns ;;
		kube-router) build_kube_router ;;
		local-path-provisioner) build_local_path_provisioner ;;
		*) build_k8s "$t" ;;
		esac
		# Built under a temporary name and renamed, so an interrupted build
		# never leaves a half-written binary that the fast path would trust.
		mv -f "${BIN_DIR}/.${t}.tmp" "${BIN_DIR}/${t}"
		log "built ${t} in $(elapsed "$start") s"
	done
	report
}

report() {
	local t
	log "binaries in ${BIN_DIR}:"
	for t in "${TOOLS[@]}"; do
		printf '  %s\n' "${BIN_DIR}/${t}" >&2
	done
	printf '%s\n' "${BIN_DIR}"
}

latest() {
	# Only the proxy's version lists for the three modules we build.
	local k e h
	k=$(cd /tmp && GOTOOLCHAIN=local go list -m -versions k8s.io/kubernetes | tr ' ' '\n' | grep -E "^v1\.${K8S_MINOR}\.[0-9]+$" | sort -V | tail -1)
	e=$(cd /tmp && GOTOOLCHAIN=local go list -m -versions go.etcd.io/etcd/server/v3 | tr ' ' '\n' | grep -E '^v3\.5\.[0-9]+$' | sort -V | tail -1)
	h=$(cd /tmp && GOTOOLCHAIN=local go list -m -versions helm.sh/helm/v3 | tr ' ' '\n' | grep -E '^v3\.19\.[0-9]+$' | sort -V | tail -1)
	printf 'kubernetes %s (pinned %s)\netcd %s (pinned %s)\nhelm %s (pinned %s)\n' \
		"$k" "${K8S_VERSION}" "$e" "${ETCD_VERSION}" "$h" "${HELM_VERSION}"
}

case "${1:-build}" in
build) build_all ;;
path) printf '%s\n' "${BIN_DIR}" ;;
versions)
	printf 'kubernetes %s\netcd %s\nhelm %s\ncoredns %s\nkube-router %s\n' "${K8S_VERSION}" "${ETCD_VERSION}" "${HELM_VERSION}" "${COREDNS_VERSION}" "${KUBE_ROUTER_VERSION}"
	;;
latest) latest ;;
-h | --help | help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' ;;
*) die "unknown command '$1' (build | path | versions | latest)" ;;
esac
