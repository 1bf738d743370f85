{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "perfpilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, or release-chart when the release name does not contain the chart name. */}}
{{- define "perfpilot.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "perfpilot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries, without app.kubernetes.io/component. */}}
{{- define "perfpilot.commonLabels" -}}
helm.sh/chart: {{ include "perfpilot.chart" . }}
app.kubernetes.io/name: {{ include "perfpilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: perfpilot
{{- end }}

{{/* "true" when the ServiceMonitor is rendered (the value is on and the cluster serves the API):
the ServiceMonitor template and the PerfPilotOperatorDown rule, which watches its job, share it. */}}
{{- define "perfpilot.serviceMonitorEnabled" -}}
{{- if and .Values.metrics.serviceMonitor.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor") }}true{{ end }}
{{- end }}

{{/* The operator pod's selector (the Deployment, the Service and the ServiceMonitor use it). */}}
{{- define "perfpilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "perfpilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "perfpilot.labels" -}}
{{ include "perfpilot.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "perfpilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "perfpilot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "perfpilot.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}

{{- define "perfpilot.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecar.image.repository (toString (default .Chart.AppVersion .Values.sidecar.image.tag)) }}
{{- end }}

{{/*
The webhook configurations the chart renders (templates/webhookconfigurations.yaml) and the
operator keeps (PERFPILOT_MUTATING_WEBHOOK / PERFPILOT_VALIDATING_WEBHOOK); the RBAC names them.
Release "perfpilot": perfpilot-pod-injector and perfpilot-profile-validator, the names the
operator uses out of cluster (logic/webhooks.py MUTATING_NAME, VALIDATING_NAME).
*/}}
{{- define "perfpilot.mutatingWebhookName" -}}{{ include "perfpilot.fullname" . | trunc 49 | trimSuffix "-" }}-pod-injector{{- end }}
{{- define "perfpilot.validatingWebhookName" -}}{{ include "perfpilot.fullname" . | trunc 43 | trimSuffix "-" }}-profile-validator{{- end }}
{{/* The leader election Lease in the release's namespace (PERFPILOT_LEADER_LEASE). */}}
{{- define "perfpilot.leaseName" -}}{{ include "perfpilot.fullname" . | trunc 54 | trimSuffix "-" }}-operator{{- end }}
{{/*
The URL paths of the two webhooks (logic/webhooks.py POD_HANDLER_ID, PROFILE_HANDLER_ID): when no
replica answers, the API server's refusal quotes the URL, so the path says what is down.
*/}}
{{- define "perfpilot.podWebhookPath" -}}/perfpilot-sidecar-injector-unavailable-check-operator-pods{{- end }}
{{- define "perfpilot.profileWebhookPath" -}}/perfpilot-profile-validator-unavailable-check-operator-pods{{- end }}
{{/* The operator's CA Secret in its own namespace (clients/casecret.py SECRET_NAME). */}}
{{- define "perfpilot.caSecretName" -}}perfpilot-operator-ca{{- end }}
{{/*
The label the pod webhook sets on every pod it injects (injection.py, LABEL_PROFILE; the value is
the profile's name) and the sidecar container's metrics port name (sidecar_container()); the
PodMonitor selects on both. tests/chart reads them from the operator's code.
*/}}
{{- define "perfpilot.injectedPodLabel" -}}perfpilot.io/profile{{- end }}
{{- define "perfpilot.sidecarMetricsPortName" -}}pp-metrics{{- end }}
{{/* A map as k=v,k2=v2 (sorted), for PERFPILOT_WEBHOOK_NAMESPACE_LABELS. */}}
{{- define "perfpilot.labelPairs" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}{{ $pairs = append $pairs (printf "%s=%s" $k $v) }}{{ end }}
{{- join "," $pairs }}
{{- end }}
