{{- define "penguins.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "penguins.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "penguins.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "penguins.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) -}}
{{- end -}}

{{- define "penguins.tokenSecret" -}}
{{- default (printf "%s-admin-token" (include "penguins.fullname" .)) .Values.adminToken.existingSecret -}}
{{- end -}}

{{/* Settings shared by the API pods and the trainer: the store, the model repository, the admin token file. */}}
{{- define "penguins.env" -}}
- name: BENTOML_DO_NOT_TRACK
  value: "true"
- name: BENTOML_HOME
  value: /var/lib/penguins
- name: HOME
  value: /tmp
- name: PENGUINS_ADMIN_TOKEN_FILE
  value: /run/secrets/penguins/token
- name: PENGUINS_MODEL_REPOSITORY
  value: {{ required "modelRepository.url is required" .Values.modelRepository.url | quote }}
- name: PENGUINS_SYNC_INTERVAL_SECONDS
  value: {{ .Values.modelRepository.syncIntervalSeconds | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.modelRepository.region | quote }}
{{- with .Values.modelRepository.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- if .Values.modelRepository.credentialsSecret }}
- name: AWS_SHARED_CREDENTIALS_FILE
  value: /run/secrets/aws/credentials
{{- end }}
{{- end -}}

{{- define "penguins.volumeMounts" -}}
- name: store
  mountPath: /var/lib/penguins
- name: tmp
  mountPath: /tmp
- name: admin-token
  mountPath: /run/secrets/penguins
  readOnly: true
{{- if .Values.modelRepository.credentialsSecret }}
- name: aws-credentials
  mountPath: /run/secrets/aws
  readOnly: true
{{- end }}
{{- end -}}

{{- define "penguins.volumes" -}}
- name: store
  emptyDir: {}
- name: tmp
  emptyDir: {}
- name: admin-token
  secret:
    secretName: {{ include "penguins.tokenSecret" . }}
    defaultMode: 0400
    items:
      - key: token
        path: token
{{- with .Values.modelRepository.credentialsSecret }}
- name: aws-credentials
  secret:
    secretName: {{ . }}
    defaultMode: 0400
    items:
      - key: credentials
        path: credentials
{{- end }}
{{- end -}}
