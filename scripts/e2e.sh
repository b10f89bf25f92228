#!/usr/bin/env bash
# `make e2e`: the product installed the way users install it, on a real single-node
# Kubernetes (scripts/k8s-node.sh), then used and broken by target/debug/e2e-kubernetes.
#
#   scripts/e2e.sh [run]    node up, PostgreSQL + Pulsar, image, CRDs, helm install, smoke
#                           test, the Postman collection and scenarios, then everything down
#   scripts/e2e.sh install  the same up to an installed, Ready release, left running
#   scripts/e2e.sh scenarios  the smoke test, the Postman collection and scenarios against
#                             what `install` left
#   scripts/e2e.sh down     stop what `install` left running
#
# PostgreSQL and Pulsar run outside the cluster but inside the node's network namespace
# (scripts/infra.sh on the node's address), reached from the pods through selector-less
# Services + EndpointSlices in the `infra` namespace and the chart's externalDatabase /
# externalPulsar values, as installs with managed databases do. The image is the test
# build's `aeropartners` binary with the shared libraries it links, tagged by its hash.
#
# Environment knobs:
#   E2E_KEEP=1        `run` leaves the cluster running (stop it with `scripts/e2e.sh down`)
#   E2E_ARGS          extra arguments for e2e-kubernetes (e.g. "--rate 80 --switches 40")
#   CARGO_TARGET_DIR  where the test build is (default: <repo>/target)
set -euo pipefail
shopt -s inherit_errexit

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "${SCRIPT_DIR}/.." && pwd -P)
TARGET_DIR=${CARGO_TARGET_DIR:-${REPO_ROOT}/target}
NODE=${SCRIPT_DIR}/k8s-node.sh
E2E_DIR=${REPO_ROOT}/target/e2e
NAMESPACE=aeropartners
RELEASE=aeropartners
VALUES=(-f "${REPO_ROOT}/charts/aeropartners/ci/e2e-values.yaml")

log() { printf '[e2e] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# The node's network namespace, with the cluster's kubeconfig and the tools on PATH.
node() {
	"${NODE}" exec env PATH="${TOOLS}:${PATH}" KUBECONFIG="${E2E_DIR}/node/kubeconfig" "$@"
}

# infra.sh inside the node's namespace, for servers of its own: the URLs of the loopback
# servers (`make test` exports them) would make it pass those through instead.
infra() {
	env -u DATABASE_URL -u PULSAR_URL -u PULSAR_ADMIN_URL \
		INFRA_DIR="${E2E_DIR}/infra" INFRA_ADDRESS="${NODE_IP:?}" INFRA_INTERFACE=node0 \
		INFRA_CLIENTS=10.244.0.0/16 "${NODE}" exec "${SCRIPT_DIR}/infra.sh" "$@"
}

start_infra() {
	log "PostgreSQL and Pulsar on the node's address ${NODE_IP}"
	infra up >/dev/null
	# shellcheck disable=SC1091
	source "${E2E_DIR}/infra/env"
	PG_PORT=${DATABASE_URL##*:}
	PG_PORT=${PG_PORT%%/*}
	PULSAR_PORT=${PULSAR_URL##*:}
	PULSAR_ADMIN_PORT=${PULSAR_ADMIN_URL##*:}
}

# external_service NAME PORT NODE_PORT: a selector-less Service NAME.infra:PORT whose
# EndpointSlice points at NODE_PORT on the node's address.
external_service() {
	cat <<-EOF
		---
		apiVersion: v1
		kind: Service
		metadata: {name: $1, namespace: infra}
		spec:
		  ports: [{name: $1, port: $2, targetPort: $3, protocol: TCP}]
		---
		apiVersion: discovery.k8s.io/v1
		kind: EndpointSlice
		metadata:
		  name: $1-node
		  namespace: infra
		  labels: {kubernetes.io/service-name: $1, endpointslice.kubernetes.io/managed-by: aeropartners-e2e}
		addressType: IPv4
		endpoints: [{addresses: ["${NODE_IP}"]}]
		ports: [{name: $1, port: $3, protocol: TCP}]
	EOF
}

# The servers on the node as Services, and the Secret the chart's externalDatabase names.
external_services() {
	{
		cat <<-EOF
			apiVersion: v1
			kind: Namespace
			metadata: {name: infra}
			---
			apiVersion: v1
			kind: Namespace
			metadata: {name: ${NAMESPACE}}
			---
			apiVersion: v1
			kind: Secret
			metadata: {name: aeropartners-database, namespace: ${NAMESPACE}}
			stringData:
			  DATABASE_URL: postgres://aeropartners:aeropartners@postgres.infra.svc:5432/aeropartners
		EOF
		external_service postgres 5432 "${PG_PORT}"
		external_service pulsar 6650 "${PULSAR_PORT}"
		external_service pulsar-admin 8080 "${PULSAR_ADMIN_PORT}"
	} | node kubectl apply -f - >/dev/null
}

install() {
	local binary=${TARGET_DIR}/debug/aeropartners tag t0=${SECONDS}
	[[ -x "${binary}" ]] || die "${binary} is missing (make build)"
	# `up` builds the Kubernetes binaries the first time.
	"${NODE}" up >/dev/null
	TOOLS=$("${SCRIPT_DIR}/k8s-tools.sh" path)
	# shellcheck disable=SC1091
	source "${E2E_DIR}/node/env"
	start_infra
	# The chart's tag scheme (localhost/aeropartners:<tag>); the hash names this build.
	tag=0.1.0-dev.$(sha256sum "${binary}" | cut -c1-12)
	"${NODE}" image "localhost/aeropartners:${tag}" "${binary}"
	VALUES+=(--set "image.tag=${tag}")
	log "image localhost/aeropartners:${tag}"
	node kubectl apply -f "${REPO_ROOT}/crds/" >/dev/null
	node kubectl wait --for=condition=Established crd/reportversions.aeropartners.io --timeout=60s >/dev/null
	external_services
	log "helm install ${RELEASE} (namespace ${NAMESPACE})"
	node helm install "${RELEASE}" "${REPO_ROOT}/charts/aeropartners" -n "${NAMESPACE}" \
		"${VALUES[@]}" --wait --timeout 10m >/dev/null
	node kubectl -n "${NAMESPACE}" wait --for=condition=Available deployment --all --timeout=300s >/dev/null
	node kubectl -n "${NAMESPACE}" wait --for=condition=Ready pod --all --timeout=300s >/dev/null
	log "installed and Ready $((SECONDS - t0)) s after the first step"
	node kubectl -n "${NAMESPACE}" get pods,svc,rv
}

down() {
	local node_ip
	# shellcheck disable=SC1091
	node_ip=$(source "${E2E_DIR}/node/env" 2>/dev/null && printf '%s' "${NODE_IP:-}") || true
	if [[ -n "${node_ip}" && -f "${E2E_DIR}/infra/env" ]]; then
		env -u DATABASE_URL -u PULSAR_URL -u PULSAR_ADMIN_URL INFRA_DIR="${E2E_DIR}/infra" \
			INFRA_ADDRESS="${node_ip}" "${SCRIPT_DIR}/infra.sh" down || true
	fi
	"${NODE}" down
}

scenarios() {
	# The Postman part runs newman inside the node's network namespace, which has no way out:
	# install it (npm ci, once) from here.
	"${SCRIPT_DIR}/postman.sh" install
	TOOLS=$("${SCRIPT_DIR}/k8s-tools.sh" path)
	# shellcheck disable=SC1091
	source "${E2E_DIR}/infra/env"
	local extra=()
	read -r -a extra <<<"${E2E_ARGS:-}"
	(cd "${REPO_ROOT}" && node env DATABASE_URL="${DATABASE_URL}" PULSAR_URL="${PULSAR_URL}" \
		PULSAR_ADMIN_URL="${PULSAR_ADMIN_URL}" \
		"${TARGET_DIR}/debug/e2e-kubernetes" --namespace "${NAMESPACE}" --release "${RELEASE}" \
		--chart "${REPO_ROOT}/charts/aeropartners" "${extra[@]}")
}

on_exit() {
	local status=$?
	[[ "${E2E_KEEP:-}" == 1 ]] || down
	exit "${status}"
}

run() {
	trap on_exit EXIT
	install
	scenarios
}

case "${1:-run}" in
run) run ;;
install) install ;;
scenarios) scenarios ;;
down) down ;;
*) die "usage: $0 [run | install | scenarios | down]" ;;
esac
