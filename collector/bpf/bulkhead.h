/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The kernel/user-space contract of the Bulkhead collector: every map key, map value
 * and ring-buffer event shared by the programs in collector/bpf/ and the Rust mirror in
 * collector/src/bpf/abi.rs. The Rust side asserts the size and offset of every field at
 * compile time, so editing a struct here without editing the mirror fails the build.
 *
 * Rules: fixed-width types only, explicit padding, no bitfields. Addresses are stored in
 * network byte order in a 16-byte array (IPv4 in the first 4 bytes, the rest zero);
 * ports in host byte order.
 */
#ifndef BULKHEAD_H
#define BULKHEAD_H

#define BH_COMM_LEN 16
#define BH_DNS_MAX 512

/* Direction of a packet on the interface it was seen on (= proto Direction). */
#define BH_DIR_INGRESS 1
#define BH_DIR_EGRESS 2

/* Per-CPU counters of flows.o (`counters` map index). Every early exit is a reason.
 * Accounted packets are not counted here: the flow records already sum them. */
#define BH_FC_NON_IP 0            /* not IPv4/IPv6 (ARP, LLDP, ...): not accounted */
#define BH_FC_TRUNCATED 1         /* headers could not be read: not accounted */
#define BH_FC_FLOW_MAP_FULL 2     /* flow map full: packet not accounted (a lost flow) */
#define BH_FC_DNS_EVENTS 3        /* DNS responses sent to user space */
#define BH_FC_DNS_RINGBUF_FULL 4  /* DNS response lost: ring buffer full */
#define BH_FC_FRAGMENTS 5         /* non-first IP fragments (accounted without ports) */
#define BH_FC_MAX 6

/* Per-CPU counters of sockets.o (`counters` map index). */
#define BH_SC_OTHER_NETNS 0       /* socket event of another network namespace: ignored */
#define BH_SC_OWNER_MAP_FULL 1    /* socket owner could not be stored */
#define BH_SC_CONN_MAP_FULL 2     /* connection could not be stored */
#define BH_SC_PORT_MAP_FULL 3     /* bound port could not be stored */
#define BH_SC_EVENTS_FULL 4       /* close event lost: ring buffer full */
#define BH_SC_NO_OWNER 5          /* connection established without a known owner */
#define BH_SC_MAX 6

/* One flow: a 5-tuple in one direction on one interface. */
struct bh_flow_key {
	__u8 src[16];
	__u8 dst[16];
	__u32 ifindex;
	__u16 sport;      /* ICMP: type */
	__u16 dport;      /* ICMP: code */
	__u8 proto;       /* IANA protocol number */
	__u8 family;      /* 4 or 6 */
	__u8 direction;   /* BH_DIR_* */
	__u8 pad;
};

/* Per-CPU accounting of one flow since it was last evicted. */
struct bh_flow_value {
	__u64 packets;    /* wire-equivalent packets (GSO super-packets count each segment) */
	__u64 bytes;      /* IP header + payload, per wire-equivalent packet */
	__u64 first_ns;   /* bpf_ktime_get_coarse_ns() of the first packet on this CPU, 0 = none */
	__u64 last_ns;    /* bpf_ktime_get_coarse_ns() of the last packet on this CPU */
	__u64 sock_cookie;/* egress: cookie of the sending local socket, 0 = none */
	__u8 tcp_flags;   /* OR of TCP flag bytes */
	__u8 pad[7];
};

/* A socket seen from its own side: local and remote end. */
struct bh_sock_tuple {
	__u8 local[16];
	__u8 remote[16];
	__u16 lport;
	__u16 rport;
	__u8 proto;
	__u8 family;      /* 4 or 6 (IPv4-mapped IPv6 is normalised by user space) */
	__u8 pad[2];
};

/* The process that created a socket (taken in process context only). */
struct bh_owner {
	__u64 cgroup_id;
	__u32 pid;        /* tgid */
	__u32 uid;
	char comm[BH_COMM_LEN];
};

/* An established TCP connection of this namespace. */
struct bh_conn {
	struct bh_owner owner;
	__u64 cookie;
	__u8 is_server;   /* 1: accepted by a listener (SYN_RECV -> ESTABLISHED) */
	__u8 has_owner;   /* 0: owner unknown (socket created before the collector) */
	__u8 pad[6];
};

/* A bound port (listener or bound UDP socket). */
struct bh_port_key {
	__u16 port;
	__u8 proto;
	__u8 pad;
};

#define BH_EV_CLOSE 1
#define BH_EV_DNS 2

/* sockets.o ring buffer: a TCP connection reached CLOSE. */
struct bh_close_event {
	__u32 kind;       /* BH_EV_CLOSE */
	__u32 pad;
	struct bh_sock_tuple tuple;
	struct bh_conn conn;
};

/* flows.o ring buffer: a DNS response (UDP source port 53) seen on ingress. */
struct bh_dns_event {
	__u32 kind;       /* BH_EV_DNS */
	__u32 len;        /* bytes of payload used (the DNS message, maybe truncated) */
	__u32 ifindex;
	__u32 pad;
	__u8 payload[BH_DNS_MAX];
};

#endif /* BULKHEAD_H */
