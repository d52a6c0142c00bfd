{{/* Chart name, truncated to the 63-character label limit. */}}
{{- define "scalable-api-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name. If the release name already contains the chart name it is used as is,
so `helm install scalable-api-operator ...` gives "scalable-api-operator", not a doubled name.
*/}}
{{- define "scalable-api-operator.fullname" -}}
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

{{- define "scalable-api-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels for every object. */}}
{{- define "scalable-api-operator.labels" -}}
helm.sh/chart: {{ include "scalable-api-operator.chart" . }}
{{ include "scalable-api-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: scalable-api-operator
{{- end }}

{{/* Selector labels: stable across upgrades (a Deployment selector is immutable). */}}
{{- define "scalable-api-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scalable-api-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "scalable-api-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scalable-api-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository@digest, else repository:tag, the tag defaulting to appVersion. */}}
{{- define "scalable-api-operator.imageRef" -}}
{{- $img := index . 0 }}
{{- $appVersion := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $appVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "scalable-api-operator.image" -}}
{{- include "scalable-api-operator.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{/*
"true" when the platform assigns uids (uidAssignment platform, or auto on a cluster that
serves OpenShift's security.openshift.io/v1), else "".
*/}}
{{- define "scalable-api-operator.platformUids" -}}
{{- $mode := .Values.uidAssignment | default "auto" -}}
{{- if or (eq $mode "platform") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "security.openshift.io/v1")) -}}
true
{{- end -}}
{{- end }}

{{- define "scalable-api-operator.defaultApiImage" -}}
{{- include "scalable-api-operator.imageRef" (list .Values.defaultApiImage .Chart.AppVersion) }}
{{- end }}

{{- define "scalable-api-operator.leaseName" -}}
{{- default (include "scalable-api-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Fail early on combinations that would deploy a broken operator. */}}
{{- define "scalable-api-operator.validate" -}}
{{- if and .Values.watchNamespace .Values.watchNamespaces }}
{{- fail "set watchNamespace or watchNamespaces, not both (watchNamespaces: [a, b] covers one namespace too)" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: two active operators would fight over every object" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (empty .Values.networkPolicy.apiServer.cidrs) }}
{{- fail "networkPolicy.enabled=true needs networkPolicy.apiServer.cidrs: the API server endpoint addresses (kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes). There is no 0.0.0.0/0 default on purpose." }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "serviceMonitor.enabled=true needs metrics.service.enabled=true" }}
{{- end }}
{{- end }}

{{/*
The watched namespaces as a JSON list: watchNamespaces, or [watchNamespace], or [] for all.
*/}}
{{- define "scalable-api-operator.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- else if .Values.watchNamespace }}
{{- list .Values.watchNamespace | toJson }}
{{- else }}
{{- list | toJson }}
{{- end }}
{{- end }}

{{/* PromQL label matchers of the operator's own series: monitoringSelectors.operator, else
the job the chart's ServiceMonitor gives them (the metrics Service's name) in the release
namespace. */}}
{{- define "scalable-api-operator.operatorSelector" -}}
{{- if .Values.monitoringSelectors.operator }}
{{- .Values.monitoringSelectors.operator }}
{{- else }}
{{- printf "job=%q, namespace=%q" (printf "%s-metrics" (include "scalable-api-operator.fullname" .)) .Release.Namespace }}
{{- end }}
{{- end }}
