{{/*
Names and labels, as `helm create` makes them: `name` is the application, `fullname` the
release's instance of it, and every object is "<fullname>-<component>". Selectors use name,
instance and component only: stable across upgrades.
*/}}
{{- define "aeropartners.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aeropartners.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of a component's objects: (dict "root" $ "name" "payments") */}}
{{- define "aeropartners.component" -}}
{{- printf "%s-%s" (include "aeropartners.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The gateway's Service: the release's front door, named as the release. */}}
{{- define "aeropartners.gatewayService" -}}
{{- include "aeropartners.fullname" . -}}
{{- end -}}

{{- define "aeropartners.reportVersionName" -}}
{{- .Values.reportVersion.name | default (include "aeropartners.component" (dict "root" . "name" "reports")) -}}
{{- end -}}

{{- define "aeropartners.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aeropartners.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "aeropartners.labels" -}}
{{ include "aeropartners.selectorLabels" . }}
app.kubernetes.io/part-of: aeropartners
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is given (bitnami's common.images). */}}
{{- define "aeropartners.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{ printf "%s@%s" $image.repository $image.digest }}
{{- else -}}
{{ printf "%s:%s" $image.repository ($image.tag | default .Chart.AppVersion) }}
{{- end -}}
{{- end -}}

{{/* Call as {{- with include "aeropartners.imagePullSecrets" $ }}{{ . | nindent N }}{{ end }}:
nothing at all when there are none. */}}
{{- define "aeropartners.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
{{ toYaml . | indent 2 }}
{{- end -}}
{{- end -}}

{{/* Restricted Pod Security Standard: non-root, read-only root FS, no escalation, no caps. */}}
{{- define "aeropartners.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "aeropartners.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "aeropartners.databaseSecret" -}}
{{- if .Values.postgresql.enabled -}}{{ include "aeropartners.fullname" . }}-database{{- else -}}{{ required "externalDatabase.existingSecret is required when postgresql.enabled=false" .Values.externalDatabase.existingSecret }}{{- end -}}
{{- end -}}

{{- define "aeropartners.databaseSecretKey" -}}
{{- if .Values.postgresql.enabled -}}DATABASE_URL{{- else -}}{{ .Values.externalDatabase.existingSecretKey }}{{- end -}}
{{- end -}}

{{/* The migrations run as a hook before install and upgrade only when the database exists
before the release does (an external one); see migrations.yaml. */}}
{{- define "aeropartners.migrationsAsHook" -}}
{{- if and .Values.migrations.enabled (not .Values.postgresql.enabled) -}}true{{- end -}}
{{- end -}}

{{/* The database, for every service and the migration Job. */}}
{{- define "aeropartners.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ include "aeropartners.databaseSecret" . }}, key: {{ include "aeropartners.databaseSecretKey" . }}}}
- name: DATABASE_MAX_CONNECTIONS
  value: {{ .Values.common.database.maxConnections | toString | quote }}
- name: DATABASE_STARTUP_WAIT
  value: {{ .Values.common.database.startupWait | quote }}
{{- end -}}

{{/* The ServiceAccount of a service that authenticates operators (access.yaml), or nothing. */}}
{{- define "aeropartners.authAccount" -}}
{{- if has .name .root.Values.auth.operatorServices -}}
{{ include "aeropartners.component" (dict "root" .root "name" .name) }}
{{- end -}}
{{- end -}}

{{/* How service `name` checks its callers (services/access: AuthConfig): operators through
the API server only with its ServiceAccount (aeropartners.authAccount). */}}
{{- define "aeropartners.authEnv" -}}
{{- $auth := .root.Values.auth -}}
- name: AUTH_MODE
  value: {{ $auth.mode | quote }}
- name: AUTH_KUBERNETES
  value: {{ and $auth.kubernetes (has .name $auth.operatorServices) | toString | quote }}
- name: AUTH_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: AUTH_TOKEN_AUDIENCES
  value: {{ join "," $auth.tokenAudiences | quote }}
- name: AUTH_FAILURES_PER_MINUTE
  value: {{ $auth.failuresPerMinute | toString | quote }}
{{- end -}}

{{/* The console's sign-in (services/gateway/src/sesion.rs): the cookie key every replica shares,
the session's lifetime, and `Secure` cookies when the Ingress terminates TLS. */}}
{{- define "aeropartners.consoleEnv" -}}
{{- $console := .Values.gateway.console -}}
- name: CONSOLE_SESSION_KEY
  valueFrom: {secretKeyRef: {name: {{ $console.sessionKeySecret | default (printf "%s-console-session" (include "aeropartners.fullname" .)) }}, key: key}}
- name: CONSOLE_SESSION_TTL
  value: {{ $console.sessionTtl | quote }}
- name: CONSOLE_COOKIE_SECURE
  value: {{ and .Values.ingress.enabled (not (empty .Values.ingress.tls)) | toString | quote }}
{{- end -}}

{{/* The broker's credentials and trust, when an external Pulsar asks for them. */}}
{{- define "aeropartners.pulsarEnv" -}}
{{- $pulsar := .Values.externalPulsar -}}
{{- if and (not .Values.pulsar.enabled) $pulsar.auth.existingSecret }}
- name: PULSAR_AUTH_TOKEN
  valueFrom: {secretKeyRef: {name: {{ $pulsar.auth.existingSecret }}, key: {{ $pulsar.auth.existingSecretKey }}}}
{{- end }}
{{- if and (not .Values.pulsar.enabled) $pulsar.tls.trustCertsSecret }}
- name: PULSAR_TLS_TRUST_CERTS_FILE
  value: /etc/aeropartners/pulsar-trust/{{ $pulsar.tls.trustCertsKey }}
{{- end }}
{{- end -}}

{{- define "aeropartners.pulsarTrustVolume" -}}
{{- if and (not .Values.pulsar.enabled) .Values.externalPulsar.tls.trustCertsSecret -}}
true
{{- end -}}
{{- end -}}

{{/* Environment every service shares: logs, database (from a Secret), broker (from the ConfigMap). */}}
{{- define "aeropartners.env" -}}
{{- $root := .root -}}
- name: LOG_FORMAT
  valueFrom: {configMapKeyRef: {name: {{ include "aeropartners.fullname" $root }}-config, key: LOG_FORMAT}}
- name: RUST_LOG
  valueFrom: {configMapKeyRef: {name: {{ include "aeropartners.fullname" $root }}-config, key: RUST_LOG}}
{{- range $key := list "HTTP_HEADER_READ_TIMEOUT" "HTTP_MAX_HEADER_BYTES" "HTTP_MAX_CONNECTIONS" }}
- name: {{ $key }}
  valueFrom: {configMapKeyRef: {name: {{ include "aeropartners.fullname" $root }}-config, key: {{ $key }}}}
{{- end }}
{{- /* The edge (gateway, campaigns proxy) holds no database or broker credentials: it uses
neither, and it is what the outside reaches first. */}}
{{- if not .edge }}
- name: PULSAR_URL
  valueFrom: {configMapKeyRef: {name: {{ include "aeropartners.fullname" $root }}-config, key: PULSAR_URL}}
{{- include "aeropartners.pulsarEnv" $root }}
{{- range $key := list "RETENTION_OUTBOX" "RETENTION_INBOX" "RETENTION_INTERVAL" }}
- name: {{ $key }}
  valueFrom: {configMapKeyRef: {name: {{ include "aeropartners.fullname" $root }}-config, key: {{ $key }}}}
{{- end }}
{{ include "aeropartners.databaseEnv" $root }}
# The migration Job applies the schema; without it every service migrates at start.
- name: MIGRATE_ON_START
  value: {{ (not $root.Values.migrations.enabled) | toString | quote }}
{{- end }}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
{{- end -}}

{{/*
The scheduling knobs of a pod: a component's own value, else common's. By default the
replicas of a Deployment go on different nodes (hard: with one node left they still all run,
since a single domain has no skew) and preferably in different zones. matchLabelKeys counts
only pods of the same ReplicaSet, so a rollout's old pods do not push the new ones around;
nodeTaintsPolicy Honor leaves out nodes the pods cannot run on (a tainted control plane would
otherwise count as an empty node and block the third replica).
Parameters: root, values (the component's block), labels (its selector labels' dict).
*/}}
{{- define "aeropartners.scheduling" -}}
{{- $common := .root.Values.common -}}
{{- $v := .values -}}
{{- with ($v.nodeSelector | default $common.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($v.tolerations | default $common.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($v.affinity | default $common.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($v.priorityClassName | default $common.priorityClassName) }}
priorityClassName: {{ . }}
{{- end }}
topologySpreadConstraints:
{{- with ($v.topologySpreadConstraints | default $common.topologySpreadConstraints) }}
  {{- toYaml . | nindent 2 }}
{{- else }}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: DoNotSchedule
    nodeTaintsPolicy: Honor
    matchLabelKeys: [pod-template-hash]
    labelSelector:
      matchLabels:
        {{- include "aeropartners.selectorLabels" .labels | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    nodeTaintsPolicy: Honor
    matchLabelKeys: [pod-template-hash]
    labelSelector:
      matchLabels:
        {{- include "aeropartners.selectorLabels" .labels | nindent 8 }}
{{- end }}
{{- end -}}

{{/*
A service workload: Deployment + Service + PodDisruptionBudget.
Parameters: root, name (component), values (its block), args (container args), extraLabels
(optional; on the Deployment only, never in selectors), serviceName (optional; the Service's
name when not the component's), serviceAccount (optional: the pod talks to the Kubernetes API
with that account's token; without it no token is mounted), volumes and volumeMounts
(optional).
*/}}
{{- define "aeropartners.workload" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $labels := dict "root" $root "name" .name -}}
{{- $fullname := include "aeropartners.component" $labels -}}
{{- $service := $v.service | default dict -}}
{{- $volumes := .volumes | default list -}}
{{- $mounts := .volumeMounts | default list -}}
{{- $edge := has .name (list "gateway" "campaigns-proxy") -}}
{{- if and (include "aeropartners.pulsarTrustVolume" $root) (not $edge) -}}
{{- $tls := $root.Values.externalPulsar.tls -}}
{{- $volumes = append $volumes (dict "name" "pulsar-trust" "secret" (dict "secretName" $tls.trustCertsSecret "items" (list (dict "key" $tls.trustCertsKey "path" $tls.trustCertsKey)))) -}}
{{- $mounts = append $mounts (dict "name" "pulsar-trust" "mountPath" "/etc/aeropartners/pulsar-trust" "readOnly" true) -}}
{{- end -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "aeropartners.labels" $labels | nindent 4 }}
    {{- with .extraLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  replicas: {{ $v.replicas }}
  revisionHistoryLimit: 3
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxUnavailable: 0, maxSurge: 1}
  selector:
    matchLabels:
      {{- include "aeropartners.selectorLabels" $labels | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "aeropartners.labels" $labels | nindent 8 }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/config.yaml") $root | sha256sum }}
        {{- with (merge (dict) ($v.podAnnotations | default dict) $root.Values.common.podAnnotations) }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      terminationGracePeriodSeconds: {{ $root.Values.common.terminationGracePeriodSeconds }}
      {{- if .serviceAccount }}
      serviceAccountName: {{ .serviceAccount }}
      # The deprecated alias too, set by the API server when only the name is given: a later
      # revision (a rollback, a downgrade) that drops the account must remove both, or the
      # API server copies the alias back into the name and every new pod is refused for an
      # account that revision deleted (found by the e2e's move to the previous chart).
      serviceAccount: {{ .serviceAccount }}
      {{- else }}
      automountServiceAccountToken: false
      {{- end }}
      {{- with include "aeropartners.imagePullSecrets" $root }}{{ . | nindent 6 }}{{ end }}
      securityContext:
        {{- include "aeropartners.podSecurityContext" $root | nindent 8 }}
      {{- include "aeropartners.scheduling" (dict "root" $root "values" $v "labels" $labels) | trim | nindent 6 }}
      {{- with $volumes }}
      volumes:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .name }}
          image: {{ include "aeropartners.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- toYaml .args | nindent 12 }}
          env:
            {{- include "aeropartners.env" (dict "root" $root "edge" $edge) | nindent 12 }}
            {{- with .extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with (concat $root.Values.common.extraEnv ($v.extraEnv | default list)) }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: http
              containerPort: {{ $v.port }}
          startupProbe:
            httpGet: {path: /health, port: http}
            periodSeconds: 2
            failureThreshold: 30
          livenessProbe:
            httpGet: {path: /health, port: http}
            periodSeconds: 10
            failureThreshold: 3
          readinessProbe:
            httpGet: {path: /ready, port: http}
            periodSeconds: 2
            failureThreshold: 2
          lifecycle:
            preStop:
              sleep: {seconds: {{ $root.Values.common.preStopSleepSeconds }}}
          {{- with $mounts }}
          volumeMounts:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- include "aeropartners.containerSecurityContext" $root | nindent 12 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .serviceName | default $fullname }}
  labels:
    {{- include "aeropartners.labels" $labels | nindent 4 }}
  {{- with $service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $service.type | default "ClusterIP" }}
  selector:
    {{- include "aeropartners.selectorLabels" $labels | nindent 4 }}
  ports:
    - name: http
      port: {{ $v.port }}
      targetPort: http
      {{- if and (ne ($service.type | default "ClusterIP") "ClusterIP") $service.nodePort }}
      nodePort: {{ $service.nodePort }}
      {{- end }}
---
# Evictions (a drain, a node upgrade) take one pod at a time, and only once its replacement is
# Ready. AlwaysAllow: a pod that is not Ready anyway (its database is down, say) may be evicted,
# so an incident elsewhere never blocks a drain.
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "aeropartners.labels" $labels | nindent 4 }}
spec:
  maxUnavailable: 1
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "aeropartners.selectorLabels" $labels | nindent 6 }}
{{- end -}}

{{/* In-cluster URL of a component's Service: (dict "root" $ "name" "payments" "port" 8010) */}}
{{- define "aeropartners.url" -}}
{{- printf "http://%s:%v" (include "aeropartners.component" .) .port -}}
{{- end -}}

{{/* The readiness endpoints the console's health view shows (gateway --console-health):
every Service's /ready and the broker's health, name=URL,... */}}
{{- define "aeropartners.consoleHealth" -}}
{{- $v := .Values -}}
{{- $root := . -}}
{{- $targets := list -}}
{{- range $name, $key := dict "payments" "payments" "payments-worker" "paymentsWorker" "campaigns" "campaigns" "campaigns-proxy" "campaignsProxy" "reports" "reports" "event-collector" "eventCollector" "data-service-v1" "dataServiceV1" "data-service-v2" "dataServiceV2" -}}
{{- $targets = append $targets (printf "%s=%s/ready" $name (include "aeropartners.url" (dict "root" $root "name" $name "port" (index $v $key).port))) -}}
{{- end -}}
{{- if $v.pulsar.enabled -}}
{{- $targets = append $targets (printf "pulsar=http://%s:8080/admin/v2/brokers/health" (include "aeropartners.component" (dict "root" $root "name" "pulsar"))) -}}
{{- else if $v.externalPulsar.adminUrl -}}
{{- $targets = append $targets (printf "pulsar=%s/admin/v2/brokers/health" (trimSuffix "/" $v.externalPulsar.adminUrl)) -}}
{{- end -}}
{{- join "," $targets -}}
{{- end -}}
