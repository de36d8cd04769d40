{{- define "ar.name" -}}
{{- default .Chart.Name .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ar.labels" -}}
app.kubernetes.io/name: ambient-redirect
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ar.selectorLabels" -}}
app.kubernetes.io/name: ambient-redirect
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ar.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* ZTUNNEL_SELECTOR: k=v,... in key order (src/config.ts parses it with parseSelector). */}}
{{- define "ar.ztunnelSelector" -}}
{{- $pairs := list -}}
{{- range $k, $v := .Values.ztunnel.selector -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* ztunnel.mode inpod: the agent serves ZDS (docs/zds.md). */}}
{{- define "ar.inpod" -}}
{{- if eq .Values.ztunnel.mode "inpod" }}true{{ end -}}
{{- end -}}

{{/* The mode may load BPF programs and pin maps: ebpf, or auto (which may pick ebpf). */}}
{{- define "ar.usesEbpf" -}}
{{- if ne .Values.redirectMode "iptables" }}true{{ end -}}
{{- end -}}

{{/* The mode may write the node's iptables: iptables, or auto (which may pick it). */}}
{{- define "ar.usesIptables" -}}
{{- if ne .Values.redirectMode "ebpf" }}true{{ end -}}
{{- end -}}

{{/*
Capabilities added back after drop ALL; why each one: deploy/README.md.
  NET_ADMIN  both modes: tc/netlink, routes, rules, links, iptables-nft, ipset, loading SCHED_CLS programs
  SYS_ADMIN  both modes: setns(2) into ztunnel's netns, `ip netns exec` (unshare + mounts), bpf() on every kernel
  NET_RAW    iptables mode: iptables-legacy's raw socket (the node may use the legacy backend)
  SYS_RESOURCE  ebpf mode on kernels < 5.11, when asked (legacyKernelMemlock)
  SYS_PTRACE ztunnel.mode inpod: open /proc/<pid>/ns/net of the host's processes (pods' pause
             processes run as other users) to find the netns of pods that exist at start
*/}}
{{- define "ar.capabilities" -}}
{{- $caps := list "NET_ADMIN" "SYS_ADMIN" -}}
{{- if include "ar.usesIptables" . -}}{{- $caps = append $caps "NET_RAW" -}}{{- end -}}
{{- if and (include "ar.usesEbpf" .) .Values.legacyKernelMemlock -}}{{- $caps = append $caps "SYS_RESOURCE" -}}{{- end -}}
{{- if include "ar.inpod" . -}}{{- $caps = append $caps "SYS_PTRACE" -}}{{- end -}}
{{- toJson $caps -}}
{{- end -}}

{{- define "ar.podSecurity" -}}
runAsUser: 0
runAsGroup: 0
runAsNonRoot: false
seccompProfile:
  type: RuntimeDefault
{{- with .Values.seLinuxOptions }}
seLinuxOptions:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The CNI gate's mounts (agent and cni-uninstall): same paths as on the host. */}}
{{- define "ar.cniMounts" -}}
- name: cni-bin
  mountPath: {{ .Values.cni.binDir }}
- name: cni-conf
  mountPath: {{ .Values.cni.confDir }}
- name: cni-run
  mountPath: {{ .Values.cni.runDir }}
- name: cni-state
  mountPath: {{ .Values.cni.stateDir }}
{{- end -}}
