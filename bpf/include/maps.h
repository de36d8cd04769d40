/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The maps every program shares, pinned by name under the pin folder. */
#ifndef AMBIENT_REDIRECT_MAPS_H
#define AMBIENT_REDIRECT_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ambient_redirect.h"

/* pods: ::ffff:198.18.0.10 -> { ifindex 12, mac 0a:58:c6:12:00:0a, flags ENROLLED, slot 3 } */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PODS);
	__type(key, struct addr_key);
	__type(value, struct pod_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pods SEC(".maps");

/* ztunnel: 0 -> { ifindex 7, peer_ifindex 2, mac 0a:58:c6:12:00:02, flags PRESENT } */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ztunnel_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ztunnel SEC(".maps");

/* dns_servers: ::ffff:10.96.0.10 -> { flags 0 } */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_DNS_SERVERS);
	__type(key, struct addr_key);
	__type(value, struct dns_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_servers SEC(".maps");

/* host_flows (IPv6, written by in_redirect): { pod fd00::a:8080, node fd00::4:41234, TCP } -> { ifindex 12 } */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_HOST_FLOWS);
	__type(key, struct host_flow_key);
	__type(value, struct host_flow_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} host_flows SEC(".maps");

/* host_flows4 (IPv4, written by in_redirect): { pod 198.18.0.10:8080, node 10.0.0.4:41234, TCP } -> { ifindex 12 } */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_HOST_FLOWS);
	__type(key, struct host_flow4_key);
	__type(value, struct host_flow_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} host_flows4 SEC(".maps");

/*
 * counters (per CPU, an array: a lookup the verifier inlines, no entry to create):
 * slot 3 -> { redirected 40/2960, dropped 1/60, passed 3/180 }. Slots 1..MAX_PODS are
 * the controller's, one per pod veth; slot 0 (COUNTERS_NO_SLOT) takes what no slot names.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_PODS + 1);
	__type(key, __u32);
	__type(value, struct pod_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

/*
 * veth_slots (the controller's, read only for frames judged before or without their
 * pod's entry: ARP, neighbour discovery, a spoofed source, ztunnel's deliveries):
 * 12 -> { slot 3 }
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PODS);
	__type(key, __u32);
	__type(value, struct veth_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} veth_slots SEC(".maps");

/* qdiscs (the controller's record, no program reads it): { 12, NODE } -> { CREATED } */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PODS);
	__type(key, struct qdisc_key);
	__type(value, struct qdisc_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} qdiscs SEC(".maps");

#endif
