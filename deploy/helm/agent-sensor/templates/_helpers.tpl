{{- define "agent-sensor.labels" -}}
app.kubernetes.io/name: agent-sensor
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "agent-sensor.selector" -}}
app.kubernetes.io/name: agent-sensor
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}


{{/* Object name: the release name when it already says agent-sensor. */}}
{{- define "agent-sensor.fullname" -}}
{{- if contains "agent-sensor" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-agent-sensor" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
