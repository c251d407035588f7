{{- define "herald.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "herald.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "herald.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "herald.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "herald.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "herald.fullname" .)) -}}
{{- end -}}

{{/* Stream replicas: config.replicas if set, else 3 on the bundled NATS cluster, else 1. */}}
{{- define "herald.streamReplicas" -}}
{{- if kindIs "invalid" .Values.config.replicas -}}
{{- if .Values.nats.enabled -}}3{{- else -}}1{{- end -}}
{{- else -}}
{{- .Values.config.replicas -}}
{{- end -}}
{{- end -}}

{{- define "herald.natsUrl" -}}
{{- if .Values.nats.enabled -}}
nats://{{ .Release.Name }}-nats:4222
{{- else -}}
{{ .Values.nats.url }}
{{- end -}}
{{- end -}}

{{/* The environment both services share. */}}
{{- define "herald.env" -}}
# OpenTelemetry resource attributes (k8s.pod.name, k8s.namespace.name, k8s.node.name) for spans.
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NAMESPACE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: HERALD_NATS_URL
  value: {{ include "herald.natsUrl" . | quote }}
- name: HERALD_LOG
  value: {{ .Values.config.logLevel | quote }}
- name: HERALD_LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: HERALD_REPLICAS
  value: {{ include "herald.streamReplicas" . | quote }}
- name: HERALD_PARTITIONS
  value: {{ .Values.config.partitions | default 1 | quote }}
- name: HERALD_EVENTS_MAX_AGE
  value: {{ .Values.config.eventsMaxAge | quote }}
- name: HERALD_DUPLICATE_WINDOW
  value: {{ .Values.config.duplicateWindow | quote }}
- name: HERALD_ALLOW_NETWORKS
  value: {{ .Values.config.allowNetworks | quote }}
- name: HERALD_HTTPS_ONLY
  value: {{ .Values.config.httpsOnly | quote }}
- name: HERALD_SCHEMA_VALIDATION
  value: {{ .Values.config.schemaValidation | default "enforce" | quote }}
- name: HERALD_SECRET_KEYS_FILE
  value: /etc/herald/secret-keys
{{- if or .Values.secrets.natsCreds .Values.secrets.existingSecret }}
- name: HERALD_NATS_CREDS
  value: /etc/herald/nats.creds
{{- end }}
{{- with .Values.config.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "herald.secretVolume" -}}
- name: secrets
  secret:
    secretName: {{ include "herald.secretName" . }}
    defaultMode: 0400
    items:
      - key: tokens
        path: tokens
      - key: secret-keys
        path: secret-keys
      {{- if or .Values.secrets.natsCreds .Values.secrets.existingSecret }}
      - key: nats.creds
        path: nats.creds
      {{- end }}
{{- end -}}
