#!/usr/bin/env bash
# `make e2e`: the README's Kubernetes path, run literally on a cluster shaped like kind's
# multi-node one (scripts/k8s-cluster.sh: a control plane and two workers in two zones, a
# default StorageClass), then used and broken by target/debug/e2e-kubernetes.
#
#   scripts/e2e.sh [run]      cluster up, images, `make deploy` with the chart's default
#                             values, `helm test`, then the smoke test, the Postman collection
#                             and the scenarios, then everything down
#   scripts/e2e.sh install    the same up to an installed, Ready, tested release, left running
#   scripts/e2e.sh scenarios  the smoke test, the Postman collection and scenarios against
#                             what `install` left
#   scripts/e2e.sh down       stop what `install` left running
#
# What differs from a user's kind: the images. kind pulls postgres:15 and apachepulsar/pulsar
# from Docker Hub; nothing here reaches a registry, so scripts/k8s-images.sh builds stand-ins
# under those names (what they keep of the official images is written there) and every worker
# imports them, as `make kind-load` imports the app's image. The app's image is the test
# build's `aeropartners` binary with the shared libraries it links (the Dockerfile's base
# images cannot be pulled either), named by its hash as `make images` names a build. Then
# `make deploy` runs as a user types it, with only KUBECONFIG and IMAGE set.
#
# Every command that talks to the cluster runs in the first worker's network namespace, with
# the cluster's DNS as its resolver (scripts/k8s-cluster.sh exec): it reaches Services, pods
# and the API server by the names and addresses a pod would, and nothing else.
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
CLUSTER=${SCRIPT_DIR}/k8s-cluster.sh
E2E_DIR=${REPO_ROOT}/target/e2e
# The Makefile's defaults: the release and namespace the README's `make deploy` makes.
NAMESPACE=aeropartners
RELEASE=aeropartners

log() { printf '[e2e] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# in_cluster CMD...: CMD in the first worker's network namespace, the tools on PATH.
in_cluster() {
	"${CLUSTER}" exec env PATH="${TOOLS}:${PATH}" KUBECONFIG="${KUBECONFIG_FILE}" "$@"
}

load_env() {
	TOOLS=$("${SCRIPT_DIR}/k8s-tools.sh" path)
	# shellcheck disable=SC1091
	KUBECONFIG_FILE=$(source "${E2E_DIR}/cluster/env" && printf '%s' "${KUBECONFIG}")
}

# The images of the release: the app's, named by its content, and the stand-ins of the
# official PostgreSQL and Pulsar images the chart's defaults name.
load_images() {
	local binary=$1 app_version
	app_version=$(awk '/^appVersion:/ { gsub(/"/, "", $2); print $2 }' "${REPO_ROOT}/charts/aeropartners/Chart.yaml")
	IMAGE=localhost/aeropartners:${app_version}-dev.$(sha256sum "${binary}" | cut -c1-12)
	"${CLUSTER}" image "${IMAGE}" "${binary}"
	"${CLUSTER}" import "$("${SCRIPT_DIR}/k8s-images.sh" postgres)"
	"${CLUSTER}" import "$("${SCRIPT_DIR}/k8s-images.sh" pulsar)"
	log "images: ${IMAGE}, and the postgres:15 and apachepulsar/pulsar:4.0.8 stand-ins"
}

install() {
	local binary=${TARGET_DIR}/debug/aeropartners t0=${SECONDS} deployed
	[[ -x "${binary}" ]] || die "${binary} is missing (make build)"
	# `up` builds the Kubernetes binaries the first time.
	"${CLUSTER}" up >/dev/null
	load_env
	load_images "${binary}"
	# The README's command, with the defaults: in-chart PostgreSQL and Pulsar on PVCs of the
	# default StorageClass, the CRD through Helm, the migration Job, kind's NodePorts.
	log "make deploy IMAGE=${IMAGE}"
	deployed=${SECONDS}
	in_cluster make --no-print-directory -C "${REPO_ROOT}" deploy IMAGE="${IMAGE}" >"${E2E_DIR}/deploy.log" 2>&1 || {
		tail -n 40 "${E2E_DIR}/deploy.log" >&2
		in_cluster kubectl -n "${NAMESPACE}" get pods -o wide >&2 || true
		die "make deploy failed; log: ${E2E_DIR}/deploy.log"
	}
	log "make deploy: every Deployment, StatefulSet and Job ready $((SECONDS - deployed)) s after it started"
	in_cluster kubectl -n "${NAMESPACE}" wait --for=condition=Ready rv --all --timeout=120s >/dev/null
	log "installed and Ready $((SECONDS - t0)) s after the first step"
	in_cluster kubectl -n "${NAMESPACE}" get pods,pvc,rv -o wide
	pods_per_node
	helm_test
}

# Where the scheduler put the release's pods.
pods_per_node() {
	log "pods per node:"
	in_cluster kubectl -n "${NAMESPACE}" get pods -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' |
		sort | uniq -c | while read -r count node; do log "  ${node}: ${count}"; done
}

# `helm test` (make helm-test): the chart's own checks from inside the cluster (readiness, a
# payment round trip, the report version, the operator).
helm_test() {
	local t0=${SECONDS}
	log "make helm-test"
	in_cluster make --no-print-directory -C "${REPO_ROOT}" helm-test
	log "helm test passed in $((SECONDS - t0)) s"
}

down() {
	"${CLUSTER}" down
}

# The release's connection strings, read from its Secret as a user would, for the checks
# that look into the database and the broker behind the API (by their Service names: the
# runner resolves them through the cluster's DNS).
release_env() {
	local database
	database=$(in_cluster kubectl -n "${NAMESPACE}" get secret "${RELEASE}-database" \
		-o jsonpath='{.data.DATABASE_URL}' | base64 -d)
	printf 'DATABASE_URL=%s\n' "${database}"
	printf 'PULSAR_URL=pulsar://%s-pulsar.%s.svc:6650\n' "${RELEASE}" "${NAMESPACE}"
	printf 'PULSAR_ADMIN_URL=http://%s-pulsar.%s.svc:8080\n' "${RELEASE}" "${NAMESPACE}"
	# The API server's audit log (metadata of ReportVersion changes), read by the security part.
	printf 'APISERVER_AUDIT_LOG=%s\n' "$("${CLUSTER}" env | sed -n 's/^AUDIT_LOG=//p')"
}

# The chart at the previous commit that changed charts/aeropartners (the newest whose chart
# differs from the one under test), extracted under target/e2e; nothing when there is none, or
# when its version's major.minor differs (a breaking change, documented in docs/kubernetes.md,
# which no in-place upgrade crosses).
previous_chart() {
	local dir=${E2E_DIR}/previous-chart commit='' candidate current previous
	while read -r candidate; do
		if ! git -C "${REPO_ROOT}" diff --quiet "${candidate}" -- charts/aeropartners; then
			commit=${candidate}
			break
		fi
	done < <(git -C "${REPO_ROOT}" log --format=%H -- charts/aeropartners 2>/dev/null)
	[[ -n "${commit}" ]] || {
		log "no earlier chart in the history: no upgrade from it"
		return 0
	}
	rm -rf "${dir}"
	mkdir -p "${dir}"
	git -C "${REPO_ROOT}" archive "${commit}" charts/aeropartners | tar -x -C "${dir}"
	current=$(awk '/^version:/ { print $2 }' "${REPO_ROOT}/charts/aeropartners/Chart.yaml")
	previous=$(awk '/^version:/ { print $2 }' "${dir}/charts/aeropartners/Chart.yaml")
	if [[ "${current%.*}" != "${previous%.*}" ]]; then
		log "the previous chart (${previous}, ${commit:0:7}) is not upgradable in place to ${current}: no upgrade from it"
		return 0
	fi
	log "the previous chart: ${previous} at ${commit:0:7}"
	printf '%s\n' "${dir}/charts/aeropartners"
}

scenarios() {
	# The Postman part runs newman inside the cluster's network, which has no way out:
	# install it (npm ci, once) from here.
	"${SCRIPT_DIR}/postman.sh" install
	load_env
	local extra=() variables
	read -r -a extra <<<"${E2E_ARGS:-}"
	mapfile -t variables < <(release_env)
	local previous
	previous=$(previous_chart)
	[[ -z "${previous}" ]] || extra+=(--previous-chart "${previous}")
	(cd "${REPO_ROOT}" && in_cluster env "${variables[@]}" \
		"${TARGET_DIR}/debug/e2e-kubernetes" --namespace "${NAMESPACE}" --release "${RELEASE}" \
		--chart "${REPO_ROOT}/charts/aeropartners" "${extra[@]}")
}

# The machine's memory in use (MemTotal - MemAvailable, whatever uses it), every 2 s while the
# e2e runs; `memory_report` prints the peak. A figure for the budget of a 24 GiB CI machine.
sample_memory() {
	while sleep 2; do
		awk '/^MemTotal:/ { total = $2 } /^MemAvailable:/ { print total - $2 }' /proc/meminfo
	done >"${E2E_DIR}/memory.samples" &
	MEMORY_SAMPLER=$!
}

memory_report() {
	[[ -n "${MEMORY_SAMPLER:-}" ]] || return 0
	kill "${MEMORY_SAMPLER}" 2>/dev/null || true
	wait "${MEMORY_SAMPLER}" 2>/dev/null || true
	sort -n "${E2E_DIR}/memory.samples" | tail -n 1 |
		awk '{ printf "[e2e] peak memory in use on the machine during the e2e: %.1f GiB\n", $1 / 1048576 }' >&2
}

on_exit() {
	local status=$?
	memory_report
	[[ "${E2E_KEEP:-}" == 1 ]] || down
	log "make e2e took $((SECONDS - E2E_STARTED)) s"
	exit "${status}"
}

run() {
	E2E_STARTED=${SECONDS}
	mkdir -p "${E2E_DIR}"
	trap on_exit EXIT
	sample_memory
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
