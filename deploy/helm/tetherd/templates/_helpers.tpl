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
{{- /* The Service is named after the release, and a Service's name is a
       DNS label: lower case letters, digits and dashes, from a letter.
       Helm allows release names (dots, a leading digit) the API server
       would refuse it for, after the ConfigMap is made. */ -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" (include "tetherd.fullname" .)) -}}
{{- fail (printf "the release name %q names the Service and its in-cluster host names, which must be a DNS label: lower case letters, digits and '-', starting with a letter (e.g. tetherd)" .Release.Name) -}}
{{- end -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.database.existingSecret) -}}
{{- fail (printf "replicas: %d needs PostgreSQL: set database.existingSecret to a Secret holding the database URL (key database.urlKey); SQLite is for one tetherd only (docs/operations/replicas.md)" (int .Values.replicas)) -}}
{{- end -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.sharedSecrets.existingSecret) -}}
{{- fail (printf "replicas: %d needs the files every replica shares: set sharedSecrets.existingSecret to a Secret holding ca.pem, ca-key.pem, sealing.key, release-signing-key.pk8 and release-token.key (values.yaml says how to make them; docs/operations/replicas.md)" (int .Values.replicas)) -}}
{{- end -}}
{{- if eq (int .Values.service.apiPort) (int .Values.service.mqttPort) -}}
{{- fail (printf "service.apiPort and service.mqttPort are both %d: the Service needs a port for each" (int .Values.service.apiPort)) -}}
{{- end -}}
{{- /* Devices outside the cluster verify tetherd's certificate for the
       first public host and connect to it for MQTT: with only the
       in-cluster names they could do neither. */ -}}
{{- if and (ne .Values.service.type "ClusterIP") (empty .Values.publicHosts) -}}
{{- fail (printf "service.type %s is for devices outside the cluster: set publicHosts to the name or address they reach it by (the certificate is issued for it, agents use the first for MQTT)" .Values.service.type) -}}
{{- end -}}
{{- /* The chart writes these keys of the config file (a second one is a
       TOML error tetherd would crash-loop on), and the database URL holds
       a password: it never goes in the ConfigMap. Top-level keys only:
       the ones before the first table. */ -}}
{{- $top := regexReplaceAll "(?s)(^|\n)\\s*\\[.*" .Values.config "" -}}
{{- range list "listen_api" "listen_mqtt" "public_hosts" "log_level" "database_url" -}}
{{- if regexMatch (printf "(?m)^\\s*\"?%s\"?\\s*=" .) $top -}}
{{- if eq . "database_url" -}}
{{- fail "config sets database_url: the URL holds a password and config is a ConfigMap; put it in a Secret and set database.existingSecret" -}}
{{- else -}}
{{- fail (printf "config sets %s, which the chart writes: set it through the chart's values (listen addresses: service.*Port; public_hosts: publicHosts; log_level: logLevel)" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Whether files come from Secrets into the data dir. */}}
{{- define "tetherd.copiesSecrets" -}}
{{- if or .Values.tls.existingSecret .Values.sharedSecrets.existingSecret }}true{{ end -}}
{{- end -}}
