// SPDX-License-Identifier: GPL-2.0-only
/*
 * Flow accounting on TC ingress/egress (attached with tcx, one link per interface and
 * direction). Per packet: parse Ethernet (+ up to two VLAN tags), IPv4 or IPv6 (+
 * extension headers), TCP/UDP/ICMP; add the packet to its flow in the active one of two
 * per-CPU hash maps (user space flips `ctl[0]` and drains the other map, so eviction
 * never races with accounting); forward DNS responses to user space. Never drops or
 * changes a packet: every program returns TCX_NEXT so later programs (the enforcer) run.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "bulkhead.h"

#define TCX_NEXT -1
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define EEXIST 17
#define IPPROTO_HOPOPTS 0
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_AH 51
#define IPPROTO_ICMPV6 58
#define IPPROTO_DSTOPTS 60
#define MAX_EXT_HEADERS 6

/* Sizes are set by user space from config (EbpfLoader::map_max_entries). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct bh_flow_key);
	__type(value, struct bh_flow_value);
} flows_a SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct bh_flow_key);
	__type(value, struct bh_flow_value);
} flows_b SEC(".maps");

/* ctl[0]: which flow map the programs write (0 = flows_a, 1 = flows_b). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ctl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BH_FC_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} dns_events SEC(".maps");

struct bh_vlan {
	__be16 tci;
	__be16 proto;
};

static __always_inline void count(__u32 reason)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &reason);
	if (c)
		*c += 1;
}

static __always_inline void add(struct bh_flow_value *v, __u64 now, __u64 packets,
				__u64 bytes, __u8 flags)
{
	if (v->first_ns == 0)
		v->first_ns = now;
	v->last_ns = now;
	v->packets += packets;
	v->bytes += bytes;
	v->tcp_flags |= flags;
}

/* The sending socket's cookie, asked once per flow and CPU (egress only: on ingress
 * the packet has no socket yet). */
static __always_inline void remember_socket(struct __sk_buff *skb, struct bh_flow_value *v,
					    bool egress)
{
	if (egress && v->sock_cookie == 0)
		v->sock_cookie = bpf_get_socket_cookie(skb);
}

static __always_inline void account(struct __sk_buff *skb, void *map, struct bh_flow_key *key,
				    __u64 packets, __u64 bytes, __u8 flags, bool egress)
{
	__u64 now = bpf_ktime_get_coarse_ns();
	struct bh_flow_value *v = bpf_map_lookup_elem(map, key);
	if (v) {
		add(v, now, packets, bytes, flags);
		remember_socket(skb, v, egress);
		return;
	}
	struct bh_flow_value fresh = {
		.packets = packets,
		.bytes = bytes,
		.first_ns = now,
		.last_ns = now,
		.tcp_flags = flags,
	};
	remember_socket(skb, &fresh, egress);
	long err = bpf_map_update_elem(map, key, &fresh, BPF_NOEXIST);
	if (err == 0)
		return;
	if (err == -EEXIST) {
		/* Another CPU created the flow between our lookup and update. */
		v = bpf_map_lookup_elem(map, key);
		if (v) {
			add(v, now, packets, bytes, flags);
			remember_socket(skb, v, egress);
			return;
		}
	}
	count(BH_FC_FLOW_MAP_FULL);
}

static __always_inline void send_dns(struct __sk_buff *skb, __u32 off, __u32 len)
{
	if (len < 12)
		return;
	if (len > BH_DNS_MAX)
		len = BH_DNS_MAX;
	struct bh_dns_event *ev = bpf_ringbuf_reserve(&dns_events, sizeof(*ev), 0);
	if (!ev) {
		count(BH_FC_DNS_RINGBUF_FULL);
		return;
	}
	ev->kind = BH_EV_DNS;
	ev->ifindex = skb->ifindex;
	ev->pad = 0;
	/* Keep the verifier's bounds: 1 <= len <= BH_DNS_MAX. */
	len &= 0x3ff;
	if (len == 0 || len > BH_DNS_MAX || bpf_skb_load_bytes(skb, off, ev->payload, len)) {
		bpf_ringbuf_discard(ev, 0);
		count(BH_FC_TRUNCATED);
		return;
	}
	ev->len = len;
	bpf_ringbuf_submit(ev, 0);
	count(BH_FC_DNS_EVENTS);
}

/* What parsing tells the accounting. */
struct meta {
	__u32 l3_off;        /* Ethernet (+ VLAN) header length */
	__u32 l4_off;
	__u32 l3_len;        /* IP packet length from its header */
	__u32 l3_header_len;
	__u32 l4_header_len;
	__u32 udp_len;
	__u8 l4_proto;
	__u8 tcp_flags;
	bool first_fragment;
};

#define PARSED -1
#define TRY_SLOW -2

/* Fast path: untagged Ethernet, IPv4 without options or IPv6 without extension headers,
 * transport header in the linear part of the skb: read in place (direct packet
 * access), no helper calls. Anything else goes to the slow path. */
static __always_inline int parse_fast(struct __sk_buff *skb, struct bh_flow_key *key,
				      struct meta *m)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u8 *l4;

	if ((void *)(eth + 1) > data_end)
		return TRY_SLOW;
	m->l3_off = sizeof(*eth);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return TRY_SLOW;
		if (ip->version != 4 || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x1fff)))
			return TRY_SLOW;
		key->family = 4;
		__builtin_memcpy(key->src, &ip->saddr, 4);
		__builtin_memcpy(key->dst, &ip->daddr, 4);
		m->l4_proto = ip->protocol;
		m->l3_len = bpf_ntohs(ip->tot_len);
		m->l3_header_len = sizeof(*ip);
		l4 = (void *)(ip + 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return TRY_SLOW;
		if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP &&
		    ip6->nexthdr != IPPROTO_ICMPV6)
			return TRY_SLOW;
		key->family = 6;
		__builtin_memcpy(key->src, &ip6->saddr, 16);
		__builtin_memcpy(key->dst, &ip6->daddr, 16);
		m->l4_proto = ip6->nexthdr;
		m->l3_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		m->l3_header_len = sizeof(*ip6);
		l4 = (void *)(ip6 + 1);
	} else {
		return TRY_SLOW;
	}
	m->l4_off = m->l3_off + m->l3_header_len;
	m->first_fragment = true;
	if (m->l4_proto == IPPROTO_TCP) {
		if ((void *)(l4 + 14) > data_end)
			return TRY_SLOW;
		key->sport = ((__u16)l4[0] << 8) | l4[1];
		key->dport = ((__u16)l4[2] << 8) | l4[3];
		m->l4_header_len = (l4[12] >> 4) * 4;
		m->tcp_flags = l4[13];
	} else if (m->l4_proto == IPPROTO_UDP) {
		if ((void *)(l4 + 8) > data_end)
			return TRY_SLOW;
		key->sport = ((__u16)l4[0] << 8) | l4[1];
		key->dport = ((__u16)l4[2] << 8) | l4[3];
		m->udp_len = ((__u32)l4[4] << 8) | l4[5];
		m->l4_header_len = 8;
	} else if (m->l4_proto == IPPROTO_ICMP || m->l4_proto == IPPROTO_ICMPV6) {
		if ((void *)(l4 + 2) > data_end)
			return TRY_SLOW;
		key->sport = l4[0];
		key->dport = l4[1];
		m->l4_header_len = 8;
	}
	return PARSED;
}

/* Slow path: VLAN tags, IP options, IPv6 extension headers, fragments, non-linear
 * skbs: copy each header out with bpf_skb_load_bytes. */
static __always_inline int parse_slow(struct __sk_buff *skb, struct bh_flow_key *key,
				      struct meta *m)
{
	struct ethhdr eth;
	__u32 off = sizeof(eth);

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
		return BH_FC_TRUNCATED;
	__be16 proto = eth.h_proto;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
			struct bh_vlan vlan;
			if (bpf_skb_load_bytes(skb, off, &vlan, sizeof(vlan)))
				return BH_FC_TRUNCATED;
			proto = vlan.proto;
			off += sizeof(vlan);
		}
	}
	m->l3_off = off;
	m->first_fragment = true;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)))
			return BH_FC_TRUNCATED;
		if (ip.version != 4 || ip.ihl < 5)
			return BH_FC_TRUNCATED;
		key->family = 4;
		__builtin_memcpy(key->src, &ip.saddr, 4);
		__builtin_memcpy(key->dst, &ip.daddr, 4);
		m->l4_proto = ip.protocol;
		m->l3_header_len = ip.ihl * 4;
		m->l3_len = bpf_ntohs(ip.tot_len);
		if (bpf_ntohs(ip.frag_off) & 0x1fff)
			m->first_fragment = false;
		m->l4_off = off + m->l3_header_len;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return BH_FC_TRUNCATED;
		key->family = 6;
		__builtin_memcpy(key->src, &ip6.saddr, 16);
		__builtin_memcpy(key->dst, &ip6.daddr, 16);
		__u8 l4_proto = ip6.nexthdr;
		__u32 l4_off = off + sizeof(ip6);
		m->l3_len = bpf_ntohs(ip6.payload_len) + sizeof(ip6);
#pragma unroll
		for (int i = 0; i < MAX_EXT_HEADERS; i++) {
			__u8 ext[8];
			if (l4_proto != IPPROTO_HOPOPTS && l4_proto != IPPROTO_ROUTING &&
			    l4_proto != IPPROTO_DSTOPTS && l4_proto != IPPROTO_FRAGMENT &&
			    l4_proto != IPPROTO_AH)
				break;
			if (bpf_skb_load_bytes(skb, l4_off, ext, sizeof(ext)))
				return BH_FC_TRUNCATED;
			if (l4_proto == IPPROTO_FRAGMENT) {
				if ((((__u16)ext[2] << 8) | ext[3]) & 0xfff8)
					m->first_fragment = false;
				l4_off += 8;
			} else if (l4_proto == IPPROTO_AH) {
				l4_off += ((__u32)ext[1] + 2) * 4;
			} else {
				l4_off += ((__u32)ext[1] + 1) * 8;
			}
			l4_proto = ext[0];
		}
		m->l4_proto = l4_proto;
		m->l4_off = l4_off;
		m->l3_header_len = l4_off - off;
	} else {
		return BH_FC_NON_IP;
	}

	if (!m->first_fragment) {
		count(BH_FC_FRAGMENTS);
	} else if (m->l4_proto == IPPROTO_TCP) {
		__u8 th[14];
		if (bpf_skb_load_bytes(skb, m->l4_off, th, sizeof(th)))
			return BH_FC_TRUNCATED;
		key->sport = ((__u16)th[0] << 8) | th[1];
		key->dport = ((__u16)th[2] << 8) | th[3];
		m->l4_header_len = (th[12] >> 4) * 4;
		m->tcp_flags = th[13];
	} else if (m->l4_proto == IPPROTO_UDP) {
		__u8 uh[8];
		if (bpf_skb_load_bytes(skb, m->l4_off, uh, sizeof(uh)))
			return BH_FC_TRUNCATED;
		key->sport = ((__u16)uh[0] << 8) | uh[1];
		key->dport = ((__u16)uh[2] << 8) | uh[3];
		m->udp_len = ((__u32)uh[4] << 8) | uh[5];
		m->l4_header_len = 8;
	} else if (m->l4_proto == IPPROTO_ICMP || m->l4_proto == IPPROTO_ICMPV6) {
		__u8 ih[2];
		if (bpf_skb_load_bytes(skb, m->l4_off, ih, sizeof(ih)))
			return BH_FC_TRUNCATED;
		key->sport = ih[0];
		key->dport = ih[1];
		m->l4_header_len = 8;
	}
	return PARSED;
}

static __always_inline int try_handle(struct __sk_buff *skb, __u8 direction)
{
	struct bh_flow_key key = {};
	struct meta m = {};

	int parsed = parse_fast(skb, &key, &m);
	if (parsed == TRY_SLOW) {
		__builtin_memset(&key, 0, sizeof(key));
		__builtin_memset(&m, 0, sizeof(m));
		parsed = parse_slow(skb, &key, &m);
	}
	if (parsed != PARSED)
		return parsed;
	key.proto = m.l4_proto;
	key.ifindex = skb->ifindex;
	key.direction = direction;

	if (m.l4_proto == IPPROTO_UDP && direction == BH_DIR_INGRESS && key.sport == 53 &&
	    m.first_fragment && m.udp_len > 8)
		send_dns(skb, m.l4_off + 8, m.udp_len - 8);

	/* A GSO super-packet stands for gso_segs packets on the wire, each with its own
	 * headers: count what the wire carries, not what the stack batched. */
	__u64 packets = 1;
	__u64 bytes = m.l3_len;
	__u32 segs = skb->gso_segs;
	if (segs > 1) {
		packets = segs;
		bytes = (__u64)(skb->len - m.l3_off) +
			(__u64)(segs - 1) * (m.l3_header_len + m.l4_header_len);
	}
	bool egress = direction == BH_DIR_EGRESS;
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&ctl, &zero);
	if (active && *active)
		account(skb, &flows_b, &key, packets, bytes, m.tcp_flags, egress);
	else
		account(skb, &flows_a, &key, packets, bytes, m.tcp_flags, egress);
	return PARSED;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 direction)
{
	int reason = try_handle(skb, direction);
	if (reason >= 0)
		count(reason);
	return TCX_NEXT;
}

SEC("classifier")
int bh_tc_ingress(struct __sk_buff *skb)
{
	return handle(skb, BH_DIR_INGRESS);
}

SEC("classifier")
int bh_tc_egress(struct __sk_buff *skb)
{
	return handle(skb, BH_DIR_EGRESS);
}

char LICENSE[] SEC("license") = "GPL";
