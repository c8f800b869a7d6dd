{{/*
Name of the chart, overridable with nameOverride.
*/}}
{{- define "skyloom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name of the release's objects: the release name, with the chart name appended
unless the release name already contains it. Cluster-scoped objects use it too, so two
releases in two namespaces do not collide.
*/}}
{{- define "skyloom.fullname" -}}
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
chart: name-version, for the helm.sh/chart label.
*/}}
{{- define "skyloom.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator's pods. Never change them between versions: a Deployment's
selector is immutable.
*/}}
{{- define "skyloom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "skyloom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "skyloom.labels" -}}
helm.sh/chart: {{ include "skyloom.chart" . }}
{{ include "skyloom.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: skyloom
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Name of the ServiceAccount the operator runs as.
*/}}
{{- define "skyloom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "skyloom.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The container image: repository@digest when a digest is set, else repository:tag with the
tag defaulting to the chart's appVersion.
*/}}
{{- define "skyloom.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Whether leader election is on: the explicit leaderElection.enabled when set, else on exactly
when more than one replica runs.
*/}}
{{- define "skyloom.leaderElect" -}}
{{- if kindIs "bool" .Values.leaderElection.enabled }}
{{- .Values.leaderElection.enabled }}
{{- else }}
{{- gt (int .Values.replicaCount) 1 }}
{{- end }}
{{- end }}
