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

{{/* Image of a component: its own `image` values, "" falling back to the global ones
(the tag to the chart's appVersion); call with (dict "root" $ "values" $componentValues) */}}
{{- define "dask-grid.image" -}}
{{- $own := default dict .values.image -}}
{{- $repository := default .root.Values.image.repository $own.repository -}}
{{- $tag := default .root.Values.image.tag $own.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%v" $repository $tag -}}
{{- end -}}

{{- define "dask-grid.pullPolicy" -}}
{{- $own := default dict .values.image -}}
{{- default .root.Values.image.pullPolicy $own.pullPolicy -}}
{{- end -}}

{{/* `grid node --nthreads` from a CPU quantity ("2", 1.5, "500m"): rounded up, at least 1 */}}
{{- define "dask-grid.cpuThreads" -}}
{{- $cpu := toString . -}}
{{- $cores := 0.0 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $cores = divf (trimSuffix "m" $cpu | float64) 1000 -}}
{{- else -}}
{{- $cores = float64 $cpu -}}
{{- end -}}
{{- max 1 (ceil $cores | int) -}}
{{- end -}}

{{/* A node's thread count: worker.nthreads, else its CPU limit, else its CPU request; "" for none */}}
{{- define "dask-grid.nthreads" -}}
{{- if .nthreads -}}
{{- .nthreads -}}
{{- else -}}
{{- $resources := default dict .resources -}}
{{- $cpu := dig "limits" "cpu" "" $resources | default (dig "requests" "cpu" "" $resources) -}}
{{- if $cpu -}}
{{- include "dask-grid.cpuThreads" $cpu -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Where the schedulers read the revocation list (a Secret or ConfigMap volume) */}}
{{- define "dask-grid.crlPath" -}}/etc/grid/crl/crl.pem{{- end -}}

{{/* The revocation list's volume source, "" when the schedulers run without one */}}
{{- define "dask-grid.crlVolumeSource" -}}
{{- $crl := .Values.tls.crl -}}
{{- if .Values.tls.enabled -}}
{{- if $crl.secret -}}
secret:
  secretName: {{ $crl.secret }}
  items:
    - key: crl.pem
      path: crl.pem
  defaultMode: 0444
{{- else if $crl.configMap -}}
configMap:
  name: {{ $crl.configMap }}
  items:
    - key: crl.pem
      path: crl.pem
  defaultMode: 0444
{{- end -}}
{{- end -}}
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

{{/* The init container that pip-installs extraPipPackages into the pod's /home/grid/.local */}}
{{- define "dask-grid.installContainer" -}}
{{- if .root.Values.extraPipPackages }}
- name: install-packages
  image: {{ include "dask-grid.image" . | quote }}
  imagePullPolicy: {{ include "dask-grid.pullPolicy" . }}
  # pip itself, no shell: each word of extraPipPackages is one requirement
  command:
    - python
    - -m
    - pip
    - install
    {{- range splitList " " .root.Values.extraPipPackages }}
    {{- if . }}
    - {{ . | quote }}
    {{- end }}
    {{- end }}
  env:
    {{- include "dask-grid.baseEnv" . | nindent 4 }}
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
{{- $crl := .Values.tls.crl -}}
{{- if and .Values.tls.enabled $crl.secret $crl.configMap -}}
{{- fail "tls.crl: set either secret or configMap, not both (every scheduler reads one revocation list)" -}}
{{- end -}}
{{- if and .Values.tls.enabled $crl.required (not (or $crl.secret $crl.configMap)) -}}
{{- fail "tls.enabled is true but no revocation list is given, so the schedulers would admit revoked certificates. Put the CA's crl.pem in a Secret (kubectl create secret generic grid-crl --from-file=crl.pem=CA_DIR/crl.pem) and set tls.crl.secret=grid-crl (or tls.crl.configMap), or set tls.crl.required=false to run without one" -}}
{{- end -}}
{{- $seen := dict -}}
{{- range .Values.regions -}}
{{- if hasKey $seen .name -}}
{{- fail (printf "regions: the name %q appears twice; every region needs its own name" .name) -}}
{{- end -}}
{{- $_ := set $seen .name true -}}
{{- end -}}
{{- end -}}
