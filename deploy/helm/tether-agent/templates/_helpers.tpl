{{/* Every object's labels, as the join manifest's. */}}
{{- define "agent.labels" -}}
app.kubernetes.io/name: tether-agent
app.kubernetes.io/managed-by: tether
tether.dev/device: {{ .Values.device | quote }}
{{- end -}}

{{- define "agent.metadata" -}}
name: {{ .name }}
{{- if .namespaced }}
namespace: tether-system
{{- end }}
labels:
  {{- include "agent.labels" .root | nindent 2 }}
{{- end -}}
