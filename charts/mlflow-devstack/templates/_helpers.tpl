{{/* The chart's name, as app.kubernetes.io/name says it. */}}
{{- define "mlflow-devstack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's base name: fullnameOverride, else the release name when it already says the chart's
name, else release-chart; 63 characters at most (a DNS label).
*/}}
{{- define "mlflow-devstack.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "mlflow-devstack.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's name, <fullname>-<component>: (dict "root" $ "component" "model"). */}}
{{- define "mlflow-devstack.componentName" -}}
{{- printf "%s-%s" (include "mlflow-devstack.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlflow-devstack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels: name, instance and component only, because a Deployment's selector cannot change
once made, and the chart's version does.
*/}}
{{- define "mlflow-devstack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlflow-devstack.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every object's labels: (dict "root" $ "component" "model"). */}}
{{- define "mlflow-devstack.labels" -}}
{{ include "mlflow-devstack.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "mlflow-devstack.chart" .root }}
{{- end -}}

{{/*
The host names a server is told to accept (comma-joined): each of .names bare and on any port,
then .extra as given. A Service's names, for (dict "service" NAME "namespace" NS):
"mlflow-devstack.serviceNames".
*/}}
{{- define "mlflow-devstack.allowedHosts" -}}
{{- $hosts := list -}}
{{- range .names -}}
{{- $hosts = append $hosts . -}}
{{- $hosts = append $hosts (printf "%s:*" .) -}}
{{- end -}}
{{- concat $hosts .extra | join "," -}}
{{- end -}}

{{/* The names a Service answers to inside the cluster, one a line. */}}
{{- define "mlflow-devstack.serviceNames" -}}
{{ .service }}
{{ .service }}.{{ .namespace }}
{{ .service }}.{{ .namespace }}.svc
{{ .service }}.{{ .namespace }}.svc.cluster.local
{{- end -}}

{{/*
What every pod spec starts with.
- No service account token: no pod talks to the Kubernetes API (and the local dev cluster cannot
  mount secret volumes, which the token is).
- No Docker-link variables: nothing reads them, and with this chart's names they would be MLFLOW_*
  variables, a prefix MLflow reads its settings from.
- Non-root as the images' user, with the runtime's default seccomp filter.
*/}}
{{- define "mlflow-devstack.podSpecBase" -}}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .Values.securityContext.runAsUser }}
  runAsGroup: {{ .Values.securityContext.runAsGroup }}
  fsGroup: {{ .Values.securityContext.fsGroup }}
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* Every container's: a read-only root filesystem, no privilege to gain, no capability. */}}
{{- define "mlflow-devstack.containerSecurity" -}}
securityContext:
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{/*
Every container's environment: the root filesystem is read-only, so home (pip, MLflow's and
matplotlib's caches) is the writable /tmp; and MLflow sends no usage data.
*/}}
{{- define "mlflow-devstack.commonEnv" -}}
- name: HOME
  value: /tmp
- name: MPLCONFIGDIR
  value: /tmp
- name: MLFLOW_DISABLE_TELEMETRY
  value: "true"
{{- end -}}

{{/* The writable /tmp, the one place a container writes besides its data volume. */}}
{{- define "mlflow-devstack.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "mlflow-devstack.tmpVolume" -}}
- name: tmp
  emptyDir: {}
{{- end -}}

{{/*
A container's resources, from (dict "name" "model" "resources" .Values.model.resources). Requests
equal to limits for both CPU and memory would make the pod Guaranteed, which the local cluster
refuses: the render fails instead.
*/}}
{{- define "mlflow-devstack.resources" -}}
{{- $r := .resources -}}
{{- if and (eq (toString $r.requests.cpu) (toString $r.limits.cpu)) (eq (toString $r.requests.memory) (toString $r.limits.memory)) -}}
{{- fail (printf "%s.resources: requests equal limits for both cpu and memory, which makes the pods Guaranteed, and the local cluster refuses those: keep a request below its limit" .name) -}}
{{- end -}}
resources:
  requests:
    cpu: {{ toString $r.requests.cpu | quote }}
    memory: {{ toString $r.requests.memory | quote }}
  limits:
    cpu: {{ toString $r.limits.cpu | quote }}
    memory: {{ toString $r.limits.memory | quote }}
{{- end -}}

{{/* A Service's spec.type, ports (to the container's port named http) and node port: (dict "service" .Values.model.service). */}}
{{- define "mlflow-devstack.servicePorts" -}}
type: {{ .service.type }}
ports:
  - name: http
    port: {{ .service.port }}
    targetPort: http
    protocol: TCP
    {{- if and (eq .service.type "NodePort") (ne (int .service.nodePort) 0) }}
    nodePort: {{ .service.nodePort }}
    {{- end }}
{{- end -}}

{{/*
The URL the sweep's pods reach the tracking server at: by default this release's tracking Service,
or, in a release of its own with tracking off, that of the release whose fullname it shares.
*/}}
{{- define "mlflow-devstack.sweepTrackingUri" -}}
{{- if .Values.sweep.trackingUri -}}
{{- .Values.sweep.trackingUri -}}
{{- else -}}
{{- printf "http://%s:%v" (include "mlflow-devstack.componentName" (dict "root" . "component" "tracking")) .Values.tracking.service.port -}}
{{- end -}}
{{- end -}}

{{/* The grid and experiment options sweep.py's plan and queue share. */}}
{{- define "mlflow-devstack.sweepGridArgs" -}}
{{- $args := list -}}
{{- if ne (toString .Values.sweep.alphas) "" -}}
{{- $args = concat $args (list "--alphas" (toString .Values.sweep.alphas)) -}}
{{- end -}}
{{- if ne (toString .Values.sweep.l1Ratios) "" -}}
{{- $args = concat $args (list "--l1-ratios" (toString .Values.sweep.l1Ratios)) -}}
{{- end -}}
{{- $args = concat $args (list "--experiment" .Values.sweep.experiment) -}}
{{- toJson $args -}}
{{- end -}}

{{/*
A sweep pod's spec: (dict "root" $ "command" LIST). Both steps run sweep.py from the image's
workspace/ against the tracking server, and are not restarted in place: a failed pod is replaced by
the Job, up to its backoffLimit.
*/}}
{{- define "mlflow-devstack.sweepPodSpec" -}}
{{- $s := .root.Values.sweep -}}
{{ include "mlflow-devstack.podSpecBase" .root }}
restartPolicy: Never
containers:
  - name: sweep
    image: {{ $s.image | quote }}
    imagePullPolicy: {{ $s.pullPolicy }}
    workingDir: /home/mlflow/workspace
    command: {{ toJson .command }}
    env:
      {{- if $s.nodeIpEnv }}
      # Before MLFLOW_TRACKING_URI, which may say $(NODE_IP): a variable expands only variables
      # listed above it.
      - name: NODE_IP
        valueFrom:
          fieldRef:
            fieldPath: status.hostIP
      {{- end }}
      - name: MLFLOW_TRACKING_URI
        value: {{ include "mlflow-devstack.sweepTrackingUri" .root | quote }}
      # MLflow's "View run at" lines would name a host the user's browser cannot reach.
      - name: MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT
        value: "true"
      {{- include "mlflow-devstack.commonEnv" .root | nindent 6 }}
    {{- include "mlflow-devstack.resources" (dict "name" "sweep" "resources" $s.resources) | nindent 4 }}
    {{- include "mlflow-devstack.containerSecurity" .root | nindent 4 }}
    volumeMounts:
      {{- include "mlflow-devstack.tmpMount" .root | nindent 6 }}
volumes:
  {{- include "mlflow-devstack.tmpVolume" .root | nindent 2 }}
{{- end -}}

{{/* The sweep's checks, before either Job renders. */}}
{{- define "mlflow-devstack.sweepChecks" -}}
{{- if not .Values.sweep.image -}}
{{- fail "sweep.image is required when sweep.enabled is true: the dev image with workspace/ baked in" -}}
{{- end -}}
{{- if eq (toString .Values.sweep.run) "" -}}
{{- fail "sweep.run is required when sweep.enabled is true: a name for this run (a DNS label), which names its Job" -}}
{{- end -}}
{{- if eq (toString .Values.sweep.run) "plan" -}}
{{- fail "sweep.run cannot be \"plan\": the planning hook's Job is <release>-sweep-plan, and Helm deletes it before each run" -}}
{{- end -}}
{{- end -}}
