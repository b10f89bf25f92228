#!/usr/bin/env bash
# Starts every Aeropartners service on this machine, prints where they listen, restarts any
# service process that dies (as Kubernetes would, with a log line saying so), and stops them
# all on Ctrl-C. Expects DATABASE_URL and PULSAR_URL in the environment (`make run` provides
# them from scripts/infra.sh).
set -euo pipefail

bin=${1:?usage: scripts/run.sh path/to/aeropartners}
: "${DATABASE_URL:?DATABASE_URL is not set}"
: "${PULSAR_URL:?PULSAR_URL is not set}"
export LOG_FORMAT=${LOG_FORMAT:-pretty}
log_dir=${RUN_LOG_DIR:-target/run}
mkdir -p "$log_dir"

supervisors=()

# supervise NAME ARGS...: runs `$bin ARGS...`, logging to $log_dir/NAME.log, and starts it
# again whenever it exits, until this supervisor is told to stop (SIGTERM).
supervise() {
	local name=$1
	shift
	(
		child=
		stopping=
		trap 'stopping=1; [[ -n $child ]] && kill -TERM "$child" 2>/dev/null' TERM INT
		while [[ -z $stopping ]]; do
			"$bin" "$@" >>"$log_dir/$name.log" 2>&1 &
			child=$!
			status=0
			wait "$child" || status=$?
			# `wait` returns early when a trap fires: wait for the child to finish draining.
			while kill -0 "$child" 2>/dev/null; do wait "$child" || true; done
			[[ -n $stopping ]] && break
			echo "[run] $name exited (status $status); restarting it in 1 s" >&2
			sleep 1
		done
	) &
	supervisors+=("$!")
}

stop() {
	trap - INT TERM EXIT
	echo
	echo "[run] stopping..."
	# SIGTERM lets each service drain its in-flight requests and work.
	for pid in "${supervisors[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${supervisors[@]}"; do wait "$pid" 2>/dev/null || true; done
	echo "[run] stopped."
}
trap stop INT TERM EXIT

"$bin" migrate

supervise payments payments --listen 127.0.0.1:8010
supervise payments-worker payments-worker --listen 127.0.0.1:8011
supervise campaigns-primary campaigns --listen 127.0.0.1:8001
supervise campaigns-replica campaigns --listen 127.0.0.1:8002
supervise campaigns-proxy campaigns-proxy --listen 127.0.0.1:8080 \
	--backend primary=http://127.0.0.1:8001,replica=http://127.0.0.1:8002
supervise gateway gateway --listen 127.0.0.1:8000
supervise data-service-v1 data-service --version v1 --listen 127.0.0.1:9001
supervise data-service-v2 data-service --version v2 --listen 127.0.0.1:9002

wait_ready() {
	local url=$1
	for _ in $(seq 1 150); do
		curl -sf "$url" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	echo "[run] warning: $url did not become ready; see $log_dir/" >&2
}
for port in 8010 8011 8001 8002 8080 8000 9001 9002; do
	wait_ready "http://127.0.0.1:$port/ready"
done

cat <<MSG

Aeropartners is running (logs in $log_dir/):

  Service              URL
  gateway (API)        http://127.0.0.1:8000      docs: http://127.0.0.1:8000/docs
  payments             http://127.0.0.1:8010/pagos
  payments-worker      http://127.0.0.1:8011/ready
  campaigns primary    http://127.0.0.1:8001/campaigns
  campaigns replica    http://127.0.0.1:8002/campaigns
  campaigns-proxy      http://127.0.0.1:8080/api/campaigns   status: http://127.0.0.1:8080/status
  data-service v1      http://127.0.0.1:9001/api/v1/pagos/report
  data-service v2      http://127.0.0.1:9002/api/v2/payments/report
  PostgreSQL           ${DATABASE_URL}
  Pulsar               ${PULSAR_URL} (admin ${PULSAR_ADMIN_URL:-n/a})

Every service also serves /health, /ready, /metrics, /openapi.json and /docs.
A service process that dies is restarted. Press Ctrl-C to stop everything.
MSG

# Runs until Ctrl-C; the supervisors keep the services up meanwhile.
wait "${supervisors[@]}"
