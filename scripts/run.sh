#!/usr/bin/env bash
# Starts every Aeropartners service on this machine, waits until each one is ready, prints
# where they listen, restarts any service process that dies (as Kubernetes would, with a line
# saying so), and stops them all on Ctrl-C, SIGTERM or a closed terminal. Expects DATABASE_URL
# and PULSAR_URL in the environment (`make run` provides them from scripts/infra.sh).
#
#   scripts/run.sh path/to/aeropartners
#
# Environment knobs:
#   RUN_LOG_DIR        logs and pid files, one per service (default: target/run)
#   RUN_READY_TIMEOUT  seconds to wait for every /ready before giving up (default: 180)
#   RUN_STOP_TIMEOUT   seconds a service may take to drain after SIGTERM before it is
#                      killed (default: 40; the services drain within 25 s)
#   PORT_GATEWAY PORT_PAYMENTS PORT_PAYMENTS_B PORT_PAYMENTS_WORKER PORT_PAYMENTS_WORKER_B
#   PORT_CAMPAIGNS_PRIMARY PORT_CAMPAIGNS_REPLICA PORT_CAMPAIGNS_PROXY PORT_DATA_SERVICE_V1
#   PORT_DATA_SERVICE_V2 PORT_REPORTS_A PORT_REPORTS_B PORT_COLLECTOR_A PORT_COLLECTOR_B
#                      the listening ports (defaults: 8000 8010 8012 8011 8013 8001 8002 8080
#                      9001 9002 8020 8021 8090 8091)
#   AFFILIATES_FILE    the collector's affiliates (default: config/afiliados.demo.yaml)
#   AUTH_MODE          `development` (the default here): a request without a credential acts
#                      with every right, so the original system's clients run unchanged; the
#                      services accept it only because every listener is on 127.0.0.1.
#                      `enforce` requires partner keys (`aeropartners claves crear`), as the
#                      chart does.
#   AUTH_KUBERNETES    `true` (with KUBECONFIG): operators, and the console's sign-in, are
#                      authenticated and authorised by that cluster (AUTH_NAMESPACE: whose
#                      Roles count), as on Kubernetes. `make console-test` runs so.
#
# How Ctrl-C works here: a terminal sends SIGINT to its whole foreground process group. The
# services run in sessions of their own (setsid), so only make and this script get it, and this
# script stops every service in order with SIGTERM; a service never sees SIGINT and is never
# mistaken for one that crashed. A shell started in the background (`make run &`, CI) hands
# its children SIGINT *ignored*, and bash cannot trap a signal that was ignored when it started,
# so the script first re-executes itself with the default dispositions.
set -euo pipefail

if [[ -z ${AEROPARTNERS_RUN_SIGNALS:-} ]]; then
	export AEROPARTNERS_RUN_SIGNALS=default
	exec env --default-signal=INT,TERM "${BASH}" "$0" "$@"
fi

# Our output may go to a pipe or a terminal that is gone by the time we speak: with
# `make run | tee run.log`, Ctrl-C kills tee along with the rest of the foreground group, and
# a closed terminal (SIGHUP) takes its tty. A write must then neither kill this script
# (SIGPIPE) nor end it (set -e) before it has stopped every service: SIGPIPE is ignored (the
# services inherit that, as Rust programs set it anyway), and every message goes through
# say/warn, which ignore a failed write.
trap '' PIPE
say() { printf '%s\n' "$*" 2>/dev/null || true; }
warn() { printf '%s\n' "$*" >&2 2>/dev/null || true; }

bin=${1:?usage: scripts/run.sh path/to/aeropartners}
: "${DATABASE_URL:?DATABASE_URL is not set}"
: "${PULSAR_URL:?PULSAR_URL is not set}"
export LOG_FORMAT=${LOG_FORMAT:-pretty}
log_dir=${RUN_LOG_DIR:-target/run}
ready_timeout=${RUN_READY_TIMEOUT:-180}
stop_timeout=${RUN_STOP_TIMEOUT:-40}
mkdir -p "${log_dir}"

gateway_port=${PORT_GATEWAY:-8000}
payments_port=${PORT_PAYMENTS:-8010}
payments_b_port=${PORT_PAYMENTS_B:-8012}
worker_port=${PORT_PAYMENTS_WORKER:-8011}
worker_b_port=${PORT_PAYMENTS_WORKER_B:-8013}
primary_port=${PORT_CAMPAIGNS_PRIMARY:-8001}
replica_port=${PORT_CAMPAIGNS_REPLICA:-8002}
proxy_port=${PORT_CAMPAIGNS_PROXY:-8080}
data_v1_port=${PORT_DATA_SERVICE_V1:-9001}
data_v2_port=${PORT_DATA_SERVICE_V2:-9002}
reports_a_port=${PORT_REPORTS_A:-8020}
reports_b_port=${PORT_REPORTS_B:-8021}
collector_a_port=${PORT_COLLECTOR_A:-8090}
collector_b_port=${PORT_COLLECTOR_B:-8091}
repo_root=$(cd "$(dirname "$0")/.." && pwd)
export AFFILIATES_FILE=${AFFILIATES_FILE:-${repo_root}/config/afiliados.demo.yaml}
export AUTH_MODE=${AUTH_MODE:-development}

local_url() { printf 'http://127.0.0.1:%s' "$1"; }

# console_health: the readiness endpoints the console's health view shows, name=URL,...
# (every service below, and the broker through its admin API).
console_health() {
	local entries=(
		"payments=$(local_url "${payments_port}")/ready"
		"payments-b=$(local_url "${payments_b_port}")/ready"
		"payments-worker=$(local_url "${worker_port}")/ready"
		"payments-worker-b=$(local_url "${worker_b_port}")/ready"
		"campaigns-primary=$(local_url "${primary_port}")/ready"
		"campaigns-replica=$(local_url "${replica_port}")/ready"
		"campaigns-proxy=$(local_url "${proxy_port}")/ready"
		"reports-a=$(local_url "${reports_a_port}")/ready"
		"reports-b=$(local_url "${reports_b_port}")/ready"
		"event-collector-a=$(local_url "${collector_a_port}")/ready"
		"event-collector-b=$(local_url "${collector_b_port}")/ready"
		"data-service-v1=$(local_url "${data_v1_port}")/ready"
		"data-service-v2=$(local_url "${data_v2_port}")/ready"
		"pulsar=${PULSAR_ADMIN_URL:-http://127.0.0.1:8081}/admin/v2/brokers/health"
	)
	local IFS=,
	printf '%s' "${entries[*]}"
}

# check_ports: refuses to start when a service's port is already taken (a `make run` still
# running in another terminal, or another program), naming the service, the variable that
# moves it and, where `ss` can tell, the process holding it. Without this, the service would
# exit at once and be restarted every second until the readiness timeout.
check_ports() {
	local taken=0 entry name variable port holder
	for entry in \
		"gateway PORT_GATEWAY ${gateway_port}" \
		"payments PORT_PAYMENTS ${payments_port}" \
		"payments-b PORT_PAYMENTS_B ${payments_b_port}" \
		"payments-worker PORT_PAYMENTS_WORKER ${worker_port}" \
		"payments-worker-b PORT_PAYMENTS_WORKER_B ${worker_b_port}" \
		"campaigns-primary PORT_CAMPAIGNS_PRIMARY ${primary_port}" \
		"campaigns-replica PORT_CAMPAIGNS_REPLICA ${replica_port}" \
		"campaigns-proxy PORT_CAMPAIGNS_PROXY ${proxy_port}" \
		"data-service-v1 PORT_DATA_SERVICE_V1 ${data_v1_port}" \
		"data-service-v2 PORT_DATA_SERVICE_V2 ${data_v2_port}" \
		"reports-a PORT_REPORTS_A ${reports_a_port}" \
		"reports-b PORT_REPORTS_B ${reports_b_port}" \
		"event-collector-a PORT_COLLECTOR_A ${collector_a_port}" \
		"event-collector-b PORT_COLLECTOR_B ${collector_b_port}"; do
		read -r name variable port <<<"${entry}"
		# A connection that succeeds means something listens there.
		if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
			holder=
			if command -v ss >/dev/null; then
				holder=$(ss -Hltnp "sport = :${port}" 2>/dev/null | grep -o 'users:(("[^"]*",pid=[0-9]*' | head -n1 |
					sed -E 's/users:\(\("([^"]*)",pid=([0-9]*)/ (held by \1, pid \2)/') || true
			fi
			warn "[run] port ${port} for ${name} is taken${holder}; stop that program, or move ${name}: ${variable}=<free port> make run"
			taken=1
		fi
	done
	((taken == 0)) || exit 1
}

# running PID: the process exists and has not exited. `kill -0` alone also succeeds for a
# zombie, i.e. a service that has exited but was not reaped yet.
running() {
	local stat
	read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
	stat=${stat##*) }
	[[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

supervisors=()
names=()

# supervise NAME ARGS...: runs `$bin ARGS...` in a session of its own, logging to
# $log_dir/NAME.log (its pid in $log_dir/NAME.pid), and starts it again whenever it exits,
# until this supervisor gets SIGTERM: then it passes SIGTERM on, waits up to $stop_timeout
# seconds for the service to drain, and kills it if it has not.
supervise() {
	local name=$1
	shift
	(
		child=
		stopping=
		trap 'stopping=1; if [[ -n ${child} ]]; then kill -TERM "${child}" 2>/dev/null || true; fi' TERM
		while [[ -z ${stopping} ]]; do
			setsid "${bin}" "$@" >>"${log_dir}/${name}.log" 2>&1 &
			child=$!
			echo "${child}" >"${log_dir}/${name}.pid"
			status=0
			wait "${child}" || status=$?
			[[ -n ${stopping} ]] && break
			# Its last log line usually says why (a port taken, a bad setting).
			warn "[run] ${name} exited (status ${status}); restarting it in 1 s. Its last log line: $(tail -n1 "${log_dir}/${name}.log" 2>/dev/null | cut -c1-300)"
			sleep 1
		done
		# `wait` returns as soon as the trap fires: give the service its drain time.
		waited=0
		while running "${child}"; do
			if ((waited >= stop_timeout * 10)); then
				warn "[run] ${name} did not stop within ${stop_timeout} s; killing it"
				kill -KILL "${child}" 2>/dev/null || true
				break
			fi
			sleep 0.1
			waited=$((waited + 1))
		done
		wait "${child}" 2>/dev/null || true
		rm -f "${log_dir}/${name}.pid"
	) &
	supervisors+=("$!")
	names+=("${name}")
}

stopped=
stop() {
	[[ -n ${stopped} ]] && return
	stopped=1
	trap - INT TERM HUP
	((${#supervisors[@]} > 0)) || return 0
	local started=${SECONDS} pid
	# Signal first, speak after: whoever reads our output may be gone already.
	for pid in "${supervisors[@]}"; do kill -TERM "${pid}" 2>/dev/null || true; done
	say ""
	say "[run] stopping ${#supervisors[@]} services (SIGTERM; each drains its work)..."
	for pid in "${supervisors[@]}"; do wait "${pid}" 2>/dev/null || true; done
	say "[run] stopped in $((SECONDS - started)) s."
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap 'stop; exit 129' HUP
trap stop EXIT

check_ports

"${bin}" migrate >>"${log_dir}/migrate.log" 2>&1 || {
	warn "[run] migrations failed; see ${log_dir}/migrate.log"
	exit 1
}

# Two of each payments process, as the chart runs them: the gateway fails over between the
# APIs, and the workers share the pending payments' subscription.
supervise payments payments --listen "127.0.0.1:${payments_port}"
supervise payments-b payments --listen "127.0.0.1:${payments_b_port}"
supervise payments-worker payments-worker --listen "127.0.0.1:${worker_port}"
supervise payments-worker-b payments-worker --listen "127.0.0.1:${worker_b_port}"
supervise campaigns-primary campaigns --listen "127.0.0.1:${primary_port}"
supervise campaigns-replica campaigns --listen "127.0.0.1:${replica_port}"
supervise campaigns-proxy campaigns-proxy --listen "127.0.0.1:${proxy_port}" \
	--backend "primary=$(local_url "${primary_port}"),replica=$(local_url "${replica_port}")"
reports_a=$(local_url "${reports_a_port}")
reports_b=$(local_url "${reports_b_port}")
collector_a=$(local_url "${collector_a_port}")
collector_b=$(local_url "${collector_b_port}")
supervise gateway gateway --listen "127.0.0.1:${gateway_port}" \
	--route "/pagos=$(local_url "${payments_port}")/pagos|$(local_url "${payments_b_port}")/pagos" \
	--route "/campaigns=$(local_url "${proxy_port}")/api/campaigns" \
	--route "/api/campaigns=$(local_url "${proxy_port}")/api/campaigns" \
	--route "/api/reports=${reports_a}/api/reports|${reports_b}/api/reports" \
	--route "/reporting=${reports_a}/reporting|${reports_b}/reporting" \
	--route "/event-collector=${collector_a}/event-collector|${collector_b}/event-collector" \
	--docs "payments=$(local_url "${payments_port}")/openapi.json" \
	--docs "campaigns=$(local_url "${primary_port}")/openapi.json" \
	--docs "reports=${reports_a}/openapi.json" \
	--docs "event-collector=${collector_a}/openapi.json" \
	--console-replica "${reports_a}/api/reports,${reports_b}/api/reports" \
	--console-health "$(console_health)"
supervise data-service-v1 data-service --version v1 --listen "127.0.0.1:${data_v1_port}"
supervise data-service-v2 data-service --version v2 --listen "127.0.0.1:${data_v2_port}"
# Two reports replicas share the projection's subscription and follow one version row.
for replica in a b; do
	port_var=reports_${replica}_port
	supervise "reports-${replica}" reports --listen "127.0.0.1:${!port_var}" \
		--instance "reports-${replica}" \
		--data-service-v1 "$(local_url "${data_v1_port}")" \
		--data-service-v2 "$(local_url "${data_v2_port}")"
done
# Two collector replicas share one dedup store and one rate limit (both in PostgreSQL).
for replica in a b; do
	port_var=collector_${replica}_port
	supervise "event-collector-${replica}" event-collector --listen "127.0.0.1:${!port_var}"
done

# Every service's /ready, in the order of `names`.
ports=("${payments_port}" "${payments_b_port}" "${worker_port}" "${worker_b_port}" "${primary_port}" "${replica_port}" "${proxy_port}"
	"${gateway_port}" "${data_v1_port}" "${data_v2_port}" "${reports_a_port}" "${reports_b_port}"
	"${collector_a_port}" "${collector_b_port}")
waiting=("${!names[@]}")
started=${SECONDS}
next_report=$((SECONDS + 10))
while ((${#waiting[@]} > 0)); do
	still=()
	for i in "${waiting[@]}"; do
		curl -sf -o /dev/null --max-time 2 "$(local_url "${ports[i]}")/ready" || still+=("${i}")
	done
	waiting=("${still[@]}")
	((${#waiting[@]} == 0)) && break
	if ((SECONDS - started >= ready_timeout)); then
		warn "[run] not ready after ${ready_timeout} s:"
		for i in "${waiting[@]}"; do
			warn "[run]   ${names[i]}: $(local_url "${ports[i]}")/ready (log: ${log_dir}/${names[i]}.log)"
		done
		exit 1
	fi
	if ((SECONDS >= next_report)); then
		pending=()
		for i in "${waiting[@]}"; do pending+=("${names[i]}"); done
		warn "[run] waiting for ${pending[*]} to be ready..."
		next_report=$((SECONDS + 10))
	fi
	sleep 0.2
done

# The banner names the database without its password: terminals get recorded and shared.
# shellcheck disable=SC2001 # a regular expression, which ${var//} does not take
shown_database_url=$(sed -E 's#(//[^:/@]+):[^@]*@#\1:***@#' <<<"${DATABASE_URL}")

cat <<MSG || true

Aeropartners is running, every service ready after $((SECONDS - started)) s (logs in ${log_dir}/):

  Service              URL
  gateway (API)        $(local_url "${gateway_port}")      docs: $(local_url "${gateway_port}")/docs
  console              $(local_url "${gateway_port}")/console   (payments, campaigns, reports and the v1/v2 switch, collector, health)
  payments a / b       $(local_url "${payments_port}")/pagos   $(local_url "${payments_b_port}")/pagos
  payments-worker a/b  $(local_url "${worker_port}")/ready   $(local_url "${worker_b_port}")/ready
  campaigns primary    $(local_url "${primary_port}")/campaigns
  campaigns replica    $(local_url "${replica_port}")/campaigns
  campaigns-proxy      $(local_url "${proxy_port}")/api/campaigns   status: $(local_url "${proxy_port}")/status
  data-service v1      $(local_url "${data_v1_port}")/api/v1/pagos/report
  data-service v2      $(local_url "${data_v2_port}")/api/v2/payments/report
  reports a / b        ${reports_a}/api/reports/payments   ${reports_b}/api/reports/payments
  reports (gateway)    $(local_url "${gateway_port}")/api/reports/payments   legacy: $(local_url "${gateway_port}")/reporting/health
  event collector a/b  ${collector_a}/event-collector/events   ${collector_b}/event-collector/events
  collector (gateway)  $(local_url "${gateway_port}")/event-collector/events   demo affiliates: ${AFFILIATES_FILE}
  switch version       curl -X PUT -H 'content-type: application/json' -d '{"active":"v2"}' $(local_url "${gateway_port}")/api/reports/version
  PostgreSQL           ${shown_database_url}
  Pulsar               ${PULSAR_URL} (admin ${PULSAR_ADMIN_URL:-n/a})

Every service also serves /health, /ready, /metrics, /openapi.json and /docs.
A service process that dies is restarted. Press Ctrl-C to stop everything.
MSG
if [[ ${AUTH_MODE} == development ]]; then
	say "Open development mode (AUTH_MODE=development): requests need no credential, for this"
	say "machine only; every service listens on 127.0.0.1 and refuses this mode on any other"
	say "address. AUTH_MODE=enforce make run requires partner keys, as the chart does."
else
	say "AUTH_MODE=${AUTH_MODE}: partner routes need a key (aeropartners claves crear --afiliado ...)."
fi

# Runs until a signal; the supervisors keep the services up meanwhile.
wait "${supervisors[@]}"
