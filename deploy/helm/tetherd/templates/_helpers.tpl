{{/* The objects' name: the release's, as DNS-1123 allows. */}}
{{- define "tetherd.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tetherd.selectorLabels" -}}
app.kubernetes.io/name: tetherd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tetherd.labels" -}}
{{ include "tetherd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Values that contradict each other: the render fails saying what to set. */}}
{{- define "tetherd.check" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.database.existingSecret) -}}
{{- fail (printf "replicas: %d needs PostgreSQL: set database.existingSecret to a Secret holding the database URL (key database.urlKey); SQLite is for one tetherd only (docs/operations/replicas.md)" (int .Values.replicas)) -}}
{{- end -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.sharedSecrets.existingSecret) -}}
{{- fail (printf "replicas: %d needs the files every replica shares: set sharedSecrets.existingSecret to a Secret holding ca.pem, ca-key.pem, sealing.key, release-signing-key.pk8 and release-token.key (values.yaml says how to make them; docs/operations/replicas.md)" (int .Values.replicas)) -}}
{{- end -}}
{{- end -}}

{{/* Whether files come from Secrets into the data dir. */}}
{{- define "tetherd.copiesSecrets" -}}
{{- if or .Values.tls.existingSecret .Values.sharedSecrets.existingSecret }}true{{ end -}}
{{- end -}}
