{{/*
Names. Resource names are "<fullname>-<region>-<component>", cut to 63 characters.
*/}}
{{- define "dask-grid.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dask-grid.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dask-grid.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<fullname>-<region>-<component>"; call with (dict "root" $ "region" "eu" "component" "scheduler") */}}
{{- define "dask-grid.componentName" -}}
{{- printf "%s-%s-%s" (include "dask-grid.fullname" .root) .region .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels; call with (dict "root" $ "component" "scheduler" "region" "eu"), region optional */}}
{{- define "dask-grid.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dask-grid.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- if .region }}
dask-grid/region: {{ .region }}
{{- end }}
{{- end -}}

{{- define "dask-grid.labels" -}}
{{ include "dask-grid.selectorLabels" . }}
helm.sh/chart: {{ include "dask-grid.chart" .root }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: dask-grid
{{- end -}}

{{/*
Deep merge of a region's overrides into a copy of the defaults, in place: unlike
sprig's mergeOverwrite, a false, 0, "" or {} in the region wins over the default.
Call with (dict "base" $copy "override" $regionValues).
*/}}
{{- define "dask-grid.mergeInto" -}}
{{- $base := .base -}}
{{- range $key, $value := .override -}}
{{- $current := index $base $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- include "dask-grid.mergeInto" (dict "base" $current "override" $value) -}}
{{- else -}}
{{- $_ := set $base $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Address of a region's scheduler inside the cluster */}}
{{- define "dask-grid.schedulerAddress" -}}
{{- $svc := include "dask-grid.componentName" (dict "root" .root "region" .region "component" .scheduler.name) -}}
{{- printf "%s://%s.%s.svc:%v" (ternary "tls" "tcp" .root.Values.tls.enabled) $svc .root.Release.Namespace .scheduler.servicePort -}}
{{- end -}}

{{/* Environment every grid container gets: a writable HOME with the pip-installed packages */}}
{{- define "dask-grid.baseEnv" -}}
- name: HOME
  value: /home/grid
- name: PYTHONUSERBASE
  value: /home/grid/.local
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- end -}}

{{/* TLS environment (distributed reads it natively); call with (dict "root" $ "roles" (list "SCHEDULER" "CLIENT")) */}}
{{- define "dask-grid.tlsEnv" -}}
{{- if .root.Values.tls.enabled }}
- name: DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION
  value: "True"
- name: DASK_DISTRIBUTED__COMM__TLS__CA_FILE
  value: /etc/grid/tls/ca.crt
{{- range .roles }}
- name: DASK_DISTRIBUTED__COMM__TLS__{{ . }}__CERT
  value: /etc/grid/tls/tls.crt
- name: DASK_DISTRIBUTED__COMM__TLS__{{ . }}__KEY
  value: /etc/grid/tls/tls.key
{{- end }}
{{- end }}
{{- end -}}

{{/* The init container that pip-installs extraPipPackages with the image's prepare.sh */}}
{{- define "dask-grid.installContainer" -}}
{{- if .root.Values.extraPipPackages }}
- name: install-packages
  image: "{{ .root.Values.image.repository }}:{{ .root.Values.image.tag }}"
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  # The image's entrypoint (prepare.sh) installs EXTRA_PIP_PACKAGES, then runs this check.
  args: ["python", "-c", "import grid.cli"]
  env:
    {{- include "dask-grid.baseEnv" . | nindent 4 }}
    - name: EXTRA_PIP_PACKAGES
      value: {{ .root.Values.extraPipPackages | quote }}
    - name: PIP_USER
      value: "1"
    - name: PIP_NO_CACHE_DIR
      value: "1"
    - name: PIP_DISABLE_PIP_VERSION_CHECK
      value: "1"
  volumeMounts:
    - name: home
      mountPath: /home/grid
    - name: tmp
      mountPath: /tmp
  {{- with .values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every component: (dict "root" $ "values" $componentValues) */}}
{{- define "dask-grid.podSettings" -}}
automountServiceAccountToken: false
{{- with .values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .root.Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Checks that JSON schema cannot express */}}
{{- define "dask-grid.validate" -}}
{{- $seen := dict -}}
{{- range .Values.regions -}}
{{- if hasKey $seen .name -}}
{{- fail (printf "regions: the name %q appears twice; every region needs its own name" .name) -}}
{{- end -}}
{{- $_ := set $seen .name true -}}
{{- end -}}
{{- end -}}
