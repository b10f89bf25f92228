#!/usr/bin/env bash
# Starts every Aeropartners service of this stage on this machine, prints where they listen,
# and stops them all on Ctrl-C. Expects DATABASE_URL and PULSAR_URL in the environment
# (`make run` provides them from scripts/infra.sh).
set -euo pipefail

bin=${1:?usage: scripts/run.sh path/to/aeropartners}
: "${DATABASE_URL:?DATABASE_URL is not set}"
: "${PULSAR_URL:?PULSAR_URL is not set}"
export LOG_FORMAT=${LOG_FORMAT:-pretty}
log_dir=${RUN_LOG_DIR:-target/run}
mkdir -p "$log_dir"

pids=()
stop() {
	trap - INT TERM EXIT
	echo
	echo "stopping..."
	# SIGTERM lets each service drain its in-flight requests and work.
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	echo "stopped."
}
trap stop INT TERM EXIT

"$bin" migrate

start() {
	local name=$1
	shift
	"$bin" "$@" >"$log_dir/$name.log" 2>&1 &
	pids+=("$!")
}

start payments payments --listen "${PAYMENTS_LISTEN:-127.0.0.1:8000}"
start payments-worker payments-worker --listen "${PAYMENTS_WORKER_LISTEN:-127.0.0.1:8011}"

wait_ready() {
	local url=$1
	for _ in $(seq 1 100); do
		curl -sf "$url" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	echo "warning: $url did not become ready; see $log_dir/" >&2
}
wait_ready "http://${PAYMENTS_LISTEN:-127.0.0.1:8000}/ready"

cat <<MSG

Aeropartners is running (logs in $log_dir/):
  Payments API     http://${PAYMENTS_LISTEN:-127.0.0.1:8000}/pagos/
  API docs         http://${PAYMENTS_LISTEN:-127.0.0.1:8000}/docs
  Worker health    http://${PAYMENTS_WORKER_LISTEN:-127.0.0.1:8011}/ready
  Metrics          http://${PAYMENTS_LISTEN:-127.0.0.1:8000}/metrics
  PostgreSQL       ${DATABASE_URL}
  Pulsar           ${PULSAR_URL} (admin ${PULSAR_ADMIN_URL:-n/a})

Press Ctrl-C to stop.
MSG

# Exit (and stop the rest) as soon as any service dies.
wait -n "${pids[@]}"
echo "a service exited; see $log_dir/" >&2
