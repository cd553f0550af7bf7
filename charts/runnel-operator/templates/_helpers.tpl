{{/* Chart name, overridable. */}}
{{- define "runnel-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name if it contains the chart name. */}}
{{- define "runnel-operator.fullname" -}}
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

{{- define "runnel-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "runnel-operator.labels" -}}
helm.sh/chart: {{ include "runnel-operator.chart" . }}
{{ include "runnel-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: runnel
{{- end }}

{{/* Labels that select the operator pods (immutable once installed). */}}
{{- define "runnel-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "runnel-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "runnel-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "runnel-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "runnel-operator.leaseName" -}}
{{- default (include "runnel-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "runnel-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Rejects value combinations that cannot work, with a clear message, before
anything is rendered.
*/}}
{{- define "runnel-operator.validate" -}}
{{- if not (has .Values.rbac.scope (list "cluster" "namespaced")) }}
{{- fail (printf "rbac.scope must be \"cluster\" or \"namespaced\", not %q" .Values.rbac.scope) }}
{{- end }}
{{- if and (eq .Values.rbac.scope "namespaced") (empty .Values.watchNamespaces) }}
{{- fail "rbac.scope=namespaced needs watchNamespaces: the namespaces to create Roles in and to watch" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled: two operators without a Lease would act on the same StreamJobs" }}
{{- end }}
{{- if not (has .Values.logFormat (list "json" "text")) }}
{{- fail (printf "logFormat must be \"json\" or \"text\", not %q" .Values.logFormat) }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled (the ServiceMonitor selects that Service)" }}
{{- end }}
{{- end }}

{{/*
Rules on the resources of StreamJobs, namespaced (Role or ClusterRole):
exactly the calls in operator/src/{controller,kubeio}.rs.
*/}}
{{- define "runnel-operator.jobRules" -}}
# The controller lists and watches StreamJobs; it patches them to remove the
# savepoint annotation and to set its finalizer.
- apiGroups: ["runnel.dev"]
  resources: ["streamjobs"]
  verbs: ["list", "watch", "patch"]
# Status is written with server-side apply.
- apiGroups: ["runnel.dev"]
  resources: ["streamjobs/status"]
  verbs: ["patch"]
# Owned objects carry blockOwnerDeletion: true; where the
# OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, some
# hardened clusters), setting it needs update on the owner's finalizers.
- apiGroups: ["runnel.dev"]
  resources: ["streamjobs/finalizers"]
  verbs: ["update"]
# One bare runtime pod per deployment: watched (owned), listed by label,
# created and deleted.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "create", "delete"]
# The job file of each deployment.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "delete"]
# The control Service, server-side applied (which creates it the first time,
# and an apply that creates is authorized as create).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "patch"]
# Savepoint disposal Jobs.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "create", "delete"]
# Events on StreamJobs (kube-runtime's recorder: create, then patch a series).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
