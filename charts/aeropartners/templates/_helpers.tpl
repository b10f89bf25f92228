{{/* Names and labels. Selectors use only name, instance and component: stable across upgrades. */}}
{{- define "aeropartners.name" -}}aeropartners{{- end -}}

{{- define "aeropartners.fullname" -}}
{{- if eq .Release.Name "aeropartners" -}}aeropartners{{- else -}}{{ printf "%s-aeropartners" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "aeropartners.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "aeropartners.labels" -}}
{{ include "aeropartners.selectorLabels" . }}
app.kubernetes.io/part-of: aeropartners
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "aeropartners.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
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

{{/* Environment every service shares: logs, database (from a Secret), broker (from the ConfigMap). */}}
{{- define "aeropartners.env" -}}
- name: LOG_FORMAT
  valueFrom: {configMapKeyRef: {name: {{ include "aeropartners.fullname" . }}-config, key: LOG_FORMAT}}
- name: RUST_LOG
  valueFrom: {configMapKeyRef: {name: {{ include "aeropartners.fullname" . }}-config, key: RUST_LOG}}
- name: PULSAR_URL
  valueFrom: {configMapKeyRef: {name: {{ include "aeropartners.fullname" . }}-config, key: PULSAR_URL}}
{{- range $key := list "RETENTION_OUTBOX" "RETENTION_INBOX" "RETENTION_INTERVAL" "HTTP_HEADER_READ_TIMEOUT" "HTTP_MAX_HEADER_BYTES" "HTTP_MAX_CONNECTIONS" }}
- name: {{ $key }}
  valueFrom: {configMapKeyRef: {name: {{ include "aeropartners.fullname" $ }}-config, key: {{ $key }}}}
{{- end }}
- name: DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ include "aeropartners.databaseSecret" . }}, key: DATABASE_URL}}
- name: MIGRATE_ON_START
  value: "false"
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
{{- end -}}

{{/*
A service workload: Deployment + Service + PodDisruptionBudget.
Parameters: root, name (component), values (its block), args (container args), nodePort and
extraLabels (optional; extraLabels go on the Deployment only, never into selectors),
serviceAccount (optional: the pod talks to the Kubernetes API with that account's token;
without it no token is mounted), volumes and volumeMounts (optional).
*/}}
{{- define "aeropartners.workload" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $labels := dict "root" $root "name" .name -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .name }}
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
    spec:
      terminationGracePeriodSeconds: {{ $root.Values.common.terminationGracePeriodSeconds }}
      {{- if .serviceAccount }}
      serviceAccountName: {{ .serviceAccount }}
      {{- else }}
      automountServiceAccountToken: false
      {{- end }}
      securityContext:
        {{- include "aeropartners.podSecurityContext" $root | nindent 8 }}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "aeropartners.selectorLabels" $labels | nindent 14 }}
      {{- with .volumes }}
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
            {{- include "aeropartners.env" $root | nindent 12 }}
            {{- with .extraEnv }}
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
          {{- with .volumeMounts }}
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
  name: {{ .name }}
  labels:
    {{- include "aeropartners.labels" $labels | nindent 4 }}
spec:
  type: {{ if .nodePort }}NodePort{{ else }}ClusterIP{{ end }}
  selector:
    {{- include "aeropartners.selectorLabels" $labels | nindent 4 }}
  ports:
    - name: http
      port: {{ $v.port }}
      targetPort: http
      {{- if .nodePort }}
      nodePort: {{ .nodePort }}
      {{- end }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  labels:
    {{- include "aeropartners.labels" $labels | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "aeropartners.selectorLabels" $labels | nindent 6 }}
{{- end -}}

{{/* The readiness endpoints the console's health view shows (gateway --console-health):
every Service's /ready and the broker's health, name=URL,... */}}
{{- define "aeropartners.consoleHealth" -}}
{{- $v := .Values -}}
{{- $targets := list -}}
{{- range $name, $key := dict "payments" "payments" "payments-worker" "paymentsWorker" "campaigns" "campaigns" "campaigns-proxy" "campaignsProxy" "reports" "reports" "event-collector" "eventCollector" "data-service-v1" "dataServiceV1" "data-service-v2" "dataServiceV2" -}}
{{- $targets = append $targets (printf "%s=http://%s:%v/ready" $name $name (index $v $key).port) -}}
{{- end -}}
{{- if $v.pulsar.enabled -}}
{{- $targets = append $targets "pulsar=http://pulsar:8080/admin/v2/brokers/health" -}}
{{- else if $v.externalPulsar.adminUrl -}}
{{- $targets = append $targets (printf "pulsar=%s/admin/v2/brokers/health" (trimSuffix "/" $v.externalPulsar.adminUrl)) -}}
{{- end -}}
{{- join "," $targets -}}
{{- end -}}
