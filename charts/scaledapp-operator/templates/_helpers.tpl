{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "scaledapp-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: "<release>-<chart>", or "<release>" when the release name already contains
the chart name; truncated to 63 characters.
*/}}
{{- define "scaledapp-operator.fullname" -}}
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

{{/*
"<chart>-<version>" for the helm.sh/chart label.
*/}}
{{- define "scaledapp-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator pods. Never change these: Deployment selectors are immutable.
*/}}
{{- define "scaledapp-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scaledapp-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels on every object of the chart.
*/}}
{{- define "scaledapp-operator.labels" -}}
helm.sh/chart: {{ include "scaledapp-operator.chart" . }}
{{ include "scaledapp-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ include "scaledapp-operator.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: scaledapp
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Name of the ServiceAccount the operator runs as.
*/}}
{{- define "scaledapp-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scaledapp-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image tag: the value, or the chart's appVersion.
*/}}
{{- define "scaledapp-operator.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
A full image reference from the one registry value: <registry>/<repository>, then @digest when
a digest is set (pinning), else :tag (default: the chart's appVersion).
Call with (dict "root" $ "image" .Values.image).
*/}}
{{- define "scaledapp-operator.imageRef" -}}
{{- $repository := .image.repository -}}
{{- with .root.Values.image.registry }}{{ $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}{{ end -}}
{{- if .image.digest }}
{{- printf "%s@%s" $repository .image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.image.tag | default .root.Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The operator's image (also the instance manager's, copied into every Postgres pod).
*/}}
{{- define "scaledapp-operator.image" -}}
{{- include "scaledapp-operator.imageRef" (dict "root" . "image" .Values.image) }}
{{- end }}

{{/*
The app image for ScaledApps that name none.
*/}}
{{- define "scaledapp-operator.appImage" -}}
{{- include "scaledapp-operator.imageRef" (dict "root" . "image" .Values.appImage) }}
{{- end }}

{{/*
Name of the leader-election Lease. Fixed: the operator's --lease-name default, which the chart
does not override.
*/}}
{{- define "scaledapp-operator.leaseName" -}}
scaledapp-operator
{{- end }}

{{/*
Replicas of the Deployment: 0 when the operator runs as a local process.
*/}}
{{- define "scaledapp-operator.replicas" -}}
{{- if .Values.localOperator.enabled }}0{{ else }}{{ int .Values.replicaCount }}{{ end }}
{{- end }}

{{/*
Name of the Service in front of the metrics APIs (the APIServices point at it).
*/}}
{{- define "scaledapp-operator.metricsApiService" -}}
{{- printf "%s-metrics-api" (include "scaledapp-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Secret holding the metrics APIs' serving certificate: the user's, or the one the chart generates.
*/}}
{{- define "scaledapp-operator.metricsApiSecret" -}}
{{- .Values.metricsApi.tls.existingSecret | default (printf "%s-metrics-api-tls" (include "scaledapp-operator.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end }}
