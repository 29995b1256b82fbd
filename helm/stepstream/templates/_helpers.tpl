{{/*
The services this chart runs, each a Deployment of the one image with the service name as argument.
*/}}
{{- define "stepstream.components" -}}
api projector scheduler executor
{{- end }}

{{/* The chart name, or nameOverride. */}}
{{- define "stepstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
"<release>-<name>", or fullnameOverride; the release name alone when it already contains the name.
Kept to 52 characters so that "-scheduler" and "-topics" suffixes still fit in 63.
*/}}
{{- define "stepstream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "stepstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every resource carries. */}}
{{- define "stepstream.labels" -}}
helm.sh/chart: {{ include "stepstream.chart" . }}
app.kubernetes.io/name: {{ include "stepstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stepstream
{{- end }}

{{/* Selector labels of the release (without the component). */}}
{{- define "stepstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stepstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component; call with (dict "root" $ "component" "api"). */}}
{{- define "stepstream.componentLabels" -}}
{{ include "stepstream.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of one component; call with (dict "root" $ "component" "api"). */}}
{{- define "stepstream.componentSelectorLabels" -}}
{{ include "stepstream.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image reference. */}}
{{- define "stepstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Names of the chart's own objects. */}}
{{- define "stepstream.configMapName" -}}
{{- include "stepstream.fullname" . }}
{{- end }}

{{- define "stepstream.topicsName" -}}
{{- printf "%s-topics" (include "stepstream.fullname" .) }}
{{- end }}

{{- define "stepstream.saslSecretName" -}}
{{- if .Values.kafka.sasl.existingSecret }}
{{- .Values.kafka.sasl.existingSecret }}
{{- else }}
{{- printf "%s-kafka-sasl" (include "stepstream.fullname" .) }}
{{- end }}
{{- end }}

{{- define "stepstream.signingSecretName" -}}
{{- if .Values.signing.existingSecret }}
{{- .Values.signing.existingSecret }}
{{- else }}
{{- printf "%s-signing" (include "stepstream.fullname" .) }}
{{- end }}
{{- end }}

{{- define "stepstream.signingSecretKey" -}}
{{- if .Values.signing.existingSecret }}
{{- .Values.signing.existingSecretKey }}
{{- else }}
{{- "signing-keys" }}
{{- end }}
{{- end }}

{{- define "stepstream.queryStoreClaimName" -}}
{{- if .Values.queryStore.persistence.existingClaim }}
{{- .Values.queryStore.persistence.existingClaim }}
{{- else }}
{{- printf "%s-query-store" (include "stepstream.fullname" .) }}
{{- end }}
{{- end }}

{{/* Whether SASL is in use: "true" or "". */}}
{{- define "stepstream.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{/* Whether any TLS file is mounted: "true" or "". */}}
{{- define "stepstream.tlsFiles" -}}
{{- $tls := .Values.kafka.tls }}
{{- if or (and $tls.existingSecret $tls.caKey) $tls.certKey }}true{{ end }}
{{- end }}

{{/* Where the Kafka TLS files are mounted. */}}
{{- define "stepstream.tlsDir" -}}
/etc/stepstream/kafka-tls
{{- end }}

{{/*
Checks of combinations the schema cannot express; each fails the render with a message that names
the values to change. Included by the ConfigMap, so that every render runs it once.
*/}}
{{- define "stepstream.validate" -}}
{{- $kafka := .Values.kafka }}
{{- $_ := required "kafka.bootstrapServers is required: set it to your Kafka cluster's bootstrap servers, host:port[,host:port...] (the chart runs no Kafka)" $kafka.bootstrapServers }}
{{- $sasl := $kafka.sasl }}
{{- $tls := $kafka.tls }}
{{- /* On upgrade (not in `helm template`): the partition count and the topic prefix must not change. */}}
{{- $previous := lookup "v1" "ConfigMap" .Release.Namespace (include "stepstream.configMapName" .) }}
{{- $previousData := dig "data" dict ($previous | default dict) }}
{{- $partitions := toString (int64 $kafka.partitions) }}
{{- with $previousData.STEPSTREAM_PARTITIONS }}
{{- if ne . $partitions }}
{{- fail (printf "kafka.partitions cannot change after install: this release runs with %s (the count its topics were created with), and the engine routes keys by that count. Set kafka.partitions: %s" . .) }}
{{- end }}
{{- end }}
{{- with $previousData.STEPSTREAM_TOPIC_PREFIX }}
{{- if ne . $kafka.topicPrefix }}
{{- fail (printf "kafka.topicPrefix cannot change on upgrade: this release uses the topics %s*, whose runs would no longer be processed. Set kafka.topicPrefix: %q, or install a second release for the new prefix" . .) }}
{{- end }}
{{- end }}
{{- if and .Values.queryStore.postgres.urlSecret .Values.queryStore.persistence.enabled }}
{{- fail "queryStore.persistence is for a SQLite file; with queryStore.postgres.urlSecret the store is in PostgreSQL: set queryStore.persistence.enabled false" }}
{{- end }}
{{- if include "stepstream.sasl" . }}
{{- if not $sasl.mechanism }}
{{- fail (printf "kafka.sasl.mechanism is required with kafka.securityProtocol %s: set PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512" $kafka.securityProtocol) }}
{{- end }}
{{- if and (not $sasl.existingSecret) (or (not $sasl.username) (not $sasl.password)) }}
{{- fail (printf "kafka.securityProtocol %s needs credentials: set kafka.sasl.existingSecret (a Secret with keys %s and %s), or kafka.sasl.username and kafka.sasl.password" $kafka.securityProtocol $sasl.usernameKey $sasl.passwordKey) }}
{{- end }}
{{- else if or $sasl.mechanism $sasl.existingSecret $sasl.username $sasl.password }}
{{- fail (printf "kafka.sasl is set, but kafka.securityProtocol is %s: SASL settings are used only with SASL_PLAINTEXT or SASL_SSL" $kafka.securityProtocol) }}
{{- end }}
{{- if not (has $kafka.securityProtocol (list "SSL" "SASL_SSL")) }}
{{- if or $tls.existingSecret $tls.clientSecret $tls.certKey $tls.keyKey }}
{{- fail (printf "kafka.tls is set, but kafka.securityProtocol is %s: TLS files are used only with SSL or SASL_SSL" $kafka.securityProtocol) }}
{{- end }}
{{- end }}
{{- if ne (empty $tls.certKey) (empty $tls.keyKey) }}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey go together: set both for a client certificate, or neither" }}
{{- end }}
{{- if and $tls.certKey (not (or $tls.clientSecret $tls.existingSecret)) }}
{{- fail "kafka.tls.certKey is set, but no Secret holds it: set kafka.tls.clientSecret or kafka.tls.existingSecret" }}
{{- end }}
{{- if and $tls.clientSecret (not $tls.certKey) }}
{{- fail "kafka.tls.clientSecret is set, but kafka.tls.certKey and kafka.tls.keyKey are not: name the certificate's and the key's keys in it" }}
{{- end }}
{{- if and $tls.existingSecret (not $tls.caKey) (not $tls.certKey) }}
{{- fail "kafka.tls.existingSecret is set, but neither kafka.tls.caKey nor kafka.tls.certKey names a key in it" }}
{{- end }}
{{- if and .Values.signing.existingSecret .Values.signing.keys }}
{{- fail "signing.existingSecret and signing.keys are both set: use one (the existing Secret, or keys for a Secret the chart creates)" }}
{{- end }}
{{- range .Values.signing.keys }}
{{- if or (contains "," .) (ne . (trim .)) (not .) }}
{{- fail "signing.keys: each key must be non-empty, without commas or surrounding spaces (the keys are joined with commas)" }}
{{- end }}
{{- end }}
{{- if .Values.queryStore.persistence.enabled }}
{{- if or .Values.api.autoscaling.enabled (gt (int .Values.api.replicas) 1) }}
{{- fail "queryStore.persistence.enabled needs api.replicas 1 and api.autoscaling.enabled false: each api replica keeps its own query store, and one volume claim serves one pod. For more replicas, leave persistence off (each replica rebuilds its store from Kafka into an emptyDir)" }}
{{- end }}
{{- end }}
{{- if not (hasPrefix "/" .Values.queryStore.path) }}
{{- fail "queryStore.path must be an absolute file path, such as /var/lib/stepstream/query.db" }}
{{- end }}
{{- if has (dir .Values.queryStore.path) (list "/" "/tmp") }}
{{- fail "queryStore.path must be in a directory of its own (not / or /tmp), such as /var/lib/stepstream/query.db" }}
{{- end }}
{{- if le (mul (int .Values.executor.terminationGracePeriodSeconds) 1000) (int .Values.executor.shutdownGraceMs) }}
{{- fail (printf "executor.terminationGracePeriodSeconds (%d s) must exceed executor.shutdownGraceMs (%d ms): the pod would be killed while in-flight deliveries finish" (int .Values.executor.terminationGracePeriodSeconds) (int .Values.executor.shutdownGraceMs)) }}
{{- end }}
{{- range $component := splitList " " (include "stepstream.components" .) }}
{{- $autoscaling := (index $.Values $component).autoscaling }}
{{- if $autoscaling.enabled }}
{{- if gt (int $autoscaling.minReplicas) (int $autoscaling.maxReplicas) }}
{{- fail (printf "%s.autoscaling.minReplicas (%d) is above %s.autoscaling.maxReplicas (%d)" $component (int $autoscaling.minReplicas) $component (int $autoscaling.maxReplicas)) }}
{{- end }}
{{- if and (kindIs "invalid" $autoscaling.targetCPUUtilizationPercentage) (kindIs "invalid" $autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail (printf "%s.autoscaling is enabled without a target: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" $component) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The shared, non-secret environment (the ConfigMap's data): the Kafka connection and the settings
every service reads.
*/}}
{{- define "stepstream.configData" -}}
KAFKA_BOOTSTRAP_SERVERS: {{ .Values.kafka.bootstrapServers | quote }}
STEPSTREAM_TOPIC_PREFIX: {{ .Values.kafka.topicPrefix | quote }}
STEPSTREAM_PARTITIONS: {{ int64 .Values.kafka.partitions | quote }}
STEPSTREAM_REPLICATION_FACTOR: {{ int64 .Values.kafka.replicationFactor | quote }}
STEPSTREAM_EVENTS_RETENTION_MS: {{ int64 .Values.kafka.eventsRetentionMs | quote }}
STEPSTREAM_KAFKA_SECURITY_PROTOCOL: {{ .Values.kafka.securityProtocol | quote }}
{{- if include "stepstream.sasl" . }}
STEPSTREAM_KAFKA_SASL_MECHANISM: {{ .Values.kafka.sasl.mechanism | quote }}
{{- end }}
{{- if and .Values.kafka.tls.existingSecret .Values.kafka.tls.caKey }}
STEPSTREAM_KAFKA_SSL_CAFILE: {{ printf "%s/ca.crt" (include "stepstream.tlsDir" .) | quote }}
{{- end }}
{{- if .Values.kafka.tls.certKey }}
STEPSTREAM_KAFKA_SSL_CERTFILE: {{ printf "%s/client.crt" (include "stepstream.tlsDir" .) | quote }}
STEPSTREAM_KAFKA_SSL_KEYFILE: {{ printf "%s/client.key" (include "stepstream.tlsDir" .) | quote }}
{{- end }}
STEPSTREAM_HOME: "/var/lib/stepstream"
STEPSTREAM_LOG_LEVEL: {{ .Values.logLevel | quote }}
STEPSTREAM_LOG_FORMAT: {{ .Values.logFormat | quote }}
STEPSTREAM_NOTIFY_BUFFER_MS: {{ int64 .Values.notifyBufferMs | quote }}
STEPSTREAM_MAX_RECORD_BYTES: {{ int64 .Values.kafka.maxRecordBytes | quote }}
STEPSTREAM_STALL_MS: {{ int64 .Values.stallMs | quote }}
{{- if .Values.sensitiveHeaders }}
STEPSTREAM_SENSITIVE_HEADERS: {{ join "," .Values.sensitiveHeaders | quote }}
{{- end }}
{{- if .Values.schemaRegistry.url }}
STEPSTREAM_SCHEMA_REGISTRY_URL: {{ .Values.schemaRegistry.url | quote }}
STEPSTREAM_RECORD_FORMAT: {{ .Values.schemaRegistry.recordFormat | quote }}
{{- end }}
{{- /* The api starts them by name; their hosts are where the executor may deliver, by default. */}}
{{- if .Values.workflows }}
STEPSTREAM_WORKFLOWS: {{ include "stepstream.workflows" . | quote }}
{{- end }}
{{- if .Values.allowedUrlHosts }}
STEPSTREAM_ALLOWED_URL_HOSTS: {{ join "," .Values.allowedUrlHosts | quote }}
{{- end }}
{{- end }}

{{/* The SASL Secret's data, when the chart creates it. */}}
{{- define "stepstream.saslSecretData" -}}
{{ .Values.kafka.sasl.usernameKey }}: {{ .Values.kafka.sasl.username | b64enc | quote }}
{{ .Values.kafka.sasl.passwordKey }}: {{ .Values.kafka.sasl.password | b64enc | quote }}
{{- end }}

{{/*
Environment entries from Secrets and the pod, which every Kafka client needs: the instance id and the
SASL credentials. Call with the root context.
*/}}
{{- define "stepstream.kafkaEnv" -}}
- name: STEPSTREAM_INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if include "stepstream.sasl" . }}
- name: STEPSTREAM_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "stepstream.saslSecretName" . }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: STEPSTREAM_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "stepstream.saslSecretName" . }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- end }}

{{/* The SASL environment of the topics Job, from the hook's own copy of the Secret. */}}
{{- define "stepstream.topicsSaslEnv" -}}
{{- if include "stepstream.sasl" . }}
{{- $name := ternary .Values.kafka.sasl.existingSecret (include "stepstream.topicsName" .) (not (empty .Values.kafka.sasl.existingSecret)) }}
- name: STEPSTREAM_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: STEPSTREAM_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- end }}

{{/* The TLS volume (a projection of the CA and client certificate Secrets), when there is one. */}}
{{- define "stepstream.tlsVolume" -}}
{{- $tls := .Values.kafka.tls }}
{{- if include "stepstream.tlsFiles" . }}
- name: kafka-tls
  projected:
    defaultMode: 0440
    sources:
      {{- if and $tls.existingSecret $tls.caKey }}
      - secret:
          name: {{ $tls.existingSecret }}
          items:
            - key: {{ $tls.caKey }}
              path: ca.crt
      {{- end }}
      {{- if $tls.certKey }}
      - secret:
          name: {{ default $tls.existingSecret $tls.clientSecret }}
          items:
            - key: {{ $tls.certKey }}
              path: client.crt
            - key: {{ $tls.keyKey }}
              path: client.key
      {{- end }}
{{- end }}
{{- end }}

{{- define "stepstream.tlsVolumeMount" -}}
{{- if include "stepstream.tlsFiles" . }}
- name: kafka-tls
  mountPath: {{ include "stepstream.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Pod settings every pod shares. */}}
{{- define "stepstream.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .Values.serviceAccountName }}
serviceAccountName: {{ .Values.serviceAccountName }}
{{- end }}
automountServiceAccountToken: false
# Service links would put variables such as STEPSTREAM_API_PORT=tcp://… (from the Service
# <release>-stepstream-api) into every container, next to the engine's own STEPSTREAM_* settings.
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* STEPSTREAM_WORKFLOWS: "name=url,name2=url2", sorted by name. */}}
{{- define "stepstream.workflows" -}}
{{- $entries := list }}
{{- range $name, $url := .Values.workflows }}
{{- $entries = append $entries (printf "%s=%s" $name $url) }}
{{- end }}
{{- join "," $entries }}
{{- end }}

{{/*
The Secret holding the api's tokens (a line each: name, roles, sha256 of the token), and its key.
*/}}
{{- define "stepstream.apiTokensSecretName" -}}
{{- if .Values.api.tokens.existingSecret }}
{{- .Values.api.tokens.existingSecret }}
{{- else }}
{{- printf "%s-api-tokens" (include "stepstream.fullname" .) }}
{{- end }}
{{- end }}

{{- define "stepstream.apiTokensSecretKey" -}}
{{- if .Values.api.tokens.existingSecret }}
{{- .Values.api.tokens.existingSecretKey }}
{{- else }}
{{- print "tokens" }}
{{- end }}
{{- end }}

{{/*
The Secret holding the keys that seal credential headers, and its key.
*/}}
{{- define "stepstream.headerKeysSecretName" -}}
{{- if .Values.headerKeys.existingSecret }}
{{- .Values.headerKeys.existingSecret }}
{{- else }}
{{- printf "%s-header-keys" (include "stepstream.fullname" .) }}
{{- end }}
{{- end }}

{{- define "stepstream.headerKeysSecretKey" -}}
{{- if .Values.headerKeys.existingSecret }}
{{- .Values.headerKeys.existingSecretKey }}
{{- else }}
{{- print "header-keys" }}
{{- end }}
{{- end }}
