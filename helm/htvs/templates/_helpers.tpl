{{/*
Names and labels. Component-scoped helpers take a dict: (dict "root" $ "component" "substitution").
*/}}

{{/* Chart name. */}}
{{- define "htvs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release name, plus the chart name unless the release name contains it. */}}
{{- define "htvs.fullname" -}}
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

{{/* Chart label value. */}}
{{- define "htvs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of one component, e.g. <fullname>-substitution. */}}
{{- define "htvs.componentName" -}}
{{- printf "%s-%s" (include "htvs.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component. */}}
{{- define "htvs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "htvs.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Common labels of one component. */}}
{{- define "htvs.labels" -}}
helm.sh/chart: {{ include "htvs.chart" .root }}
{{ include "htvs.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: htvs
{{- end }}

{{/* ServiceAccount of the service and MinIO pods. */}}
{{- define "htvs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "htvs.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ServiceAccount of the workflow pods. */}}
{{- define "htvs.workflowServiceAccountName" -}}
{{- default (printf "%s-workflow" (include "htvs.fullname" .)) .Values.workflowTemplate.serviceAccount.name }}
{{- end }}

{{/* Argo objects, named per release so that two releases in one namespace do not collide. */}}
{{- define "htvs.workflowTemplateName" -}}
{{- default (printf "%s-campaign" (include "htvs.fullname" .)) .Values.workflowTemplate.name }}
{{- end }}

{{- define "htvs.campaignConfigMapName" -}}
{{- default (printf "%s-campaign-config" (include "htvs.fullname" .)) .Values.workflowTemplate.configMap }}
{{- end }}

{{- define "htvs.artifactRepositoryConfigMapName" -}}
{{- default (printf "%s-artifact-repositories" (include "htvs.fullname" .)) .Values.workflowTemplate.artifactRepository.configMap }}
{{- end }}

{{/* htvs image; pass (dict "root" $ "gpu" true) for the CUDA image, "light" true for the image without torch. */}}
{{- define "htvs.image" -}}
{{- $repository := .root.Values.image.repository }}
{{- if .light }}{{ $repository = .root.Values.image.lightRepository }}{{ end }}
{{- if .gpu }}{{ $repository = .root.Values.image.gpuRepository }}{{ end }}
{{- printf "%s:%s" $repository (default .root.Chart.AppVersion .root.Values.image.tag) }}
{{- end }}

{{/* Secret with the S3 credentials (keys accessKey, secretKey). */}}
{{- define "htvs.s3SecretName" -}}
{{- default (printf "%s-s3" (include "htvs.fullname" .)) .Values.s3.existingSecret }}
{{- end }}

{{/* S3 endpoint host:port: the bundled MinIO, or s3.endpoint. */}}
{{- define "htvs.s3Endpoint" -}}
{{- if .Values.minio.enabled }}
{{- printf "%s:%d" (include "htvs.componentName" (dict "root" . "component" "minio")) (int .Values.minio.port) }}
{{- else }}
{{- required "s3.endpoint is required when minio.enabled is false" .Values.s3.endpoint }}
{{- end }}
{{- end }}

{{/* Environment of every htvs container: the S3 settings, credentials by reference only. */}}
{{- define "htvs.s3Env" -}}
- name: HTVS_S3_ENDPOINT
  value: {{ include "htvs.s3Endpoint" . | quote }}
- name: HTVS_S3_SECURE
  value: {{ .Values.s3.secure | toString | quote }}
- name: HTVS_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "htvs.s3SecretName" . }}
      key: accessKey
- name: HTVS_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "htvs.s3SecretName" . }}
      key: secretKey
- name: HOME
  value: /tmp
{{- end }}

{{/* The writable /tmp of every pod. */}}
{{- define "htvs.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}
