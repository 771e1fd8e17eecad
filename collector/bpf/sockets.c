// SPDX-License-Identifier: GPL-2.0-only
/*
 * Process attribution. The process is read only in process context:
 *
 *   cgroup/sock_create        socket(2) by a task: socket cookie -> owner (pid, comm,
 *                             uid, cgroup id) in `owners`.
 *   cgroup/post_bind4/6       bind(2) by a task: (protocol, port) -> owner in `ports`.
 *   tp_btf/inet_sock_set_state  TCP lifecycle, which also fires in softirq, so it never
 *                             reads `current`: it joins the socket to an owner recorded
 *                             above by cookie (client side, and listeners) or by the
 *                             listening port (accepted sockets), records the connection
 *                             in `conns` by its local 5-tuple, and reports CLOSE to user
 *                             space through `events` so that flows are evicted promptly.
 *
 * cgroup programs see every namespace's sockets (they hang off the cgroup tree), and so
 * do tracepoints: each event is compared with the collector's own network namespace
 * (`netns_cookie`, set at load) and ignored when it differs.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>
#include "bulkhead.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10

/* Network namespace this collector reports (0 = every namespace; set at load time). */
const volatile __u64 netns_cookie = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct bh_owner);
} owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct bh_sock_tuple);
	__type(value, struct bh_conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct bh_port_key);
	__type(value, struct bh_owner);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BH_SC_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline void count(__u32 reason)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &reason);
	if (c)
		*c += 1;
}

static __always_inline bool other_netns(__u64 cookie)
{
	if (netns_cookie != 0 && cookie != netns_cookie) {
		count(BH_SC_OTHER_NETNS);
		return true;
	}
	return false;
}

/* Only ever called from process-context hooks. */
static __always_inline void current_owner(struct bh_owner *owner)
{
	owner->pid = bpf_get_current_pid_tgid() >> 32;
	owner->uid = (__u32)bpf_get_current_uid_gid();
	owner->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(owner->comm, sizeof(owner->comm));
}

SEC("cgroup/sock_create")
int bh_sock_create(struct bpf_sock *sk)
{
	if (other_netns(bpf_get_netns_cookie(sk)))
		return 1;
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct bh_owner owner = {};
	current_owner(&owner);
	if (bpf_map_update_elem(&owners, &cookie, &owner, BPF_ANY))
		count(BH_SC_OWNER_MAP_FULL);
	return 1;
}

static __always_inline int post_bind(struct bpf_sock *sk)
{
	if (other_netns(bpf_get_netns_cookie(sk)))
		return 1;
	struct bh_port_key key = { .port = (__u16)sk->src_port, .proto = (__u8)sk->protocol };
	struct bh_owner owner = {};
	current_owner(&owner);
	if (bpf_map_update_elem(&ports, &key, &owner, BPF_ANY))
		count(BH_SC_PORT_MAP_FULL);
	return 1;
}

SEC("cgroup/post_bind4")
int bh_post_bind4(struct bpf_sock *sk)
{
	return post_bind(sk);
}

SEC("cgroup/post_bind6")
int bh_post_bind6(struct bpf_sock *sk)
{
	return post_bind(sk);
}

static __always_inline void read_tuple(const struct sock *sk, struct bh_sock_tuple *t)
{
	t->proto = IPPROTO_TCP;
	t->lport = sk->__sk_common.skc_num;
	t->rport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (sk->__sk_common.skc_family == AF_INET) {
		t->family = 4;
		__u32 local = sk->__sk_common.skc_rcv_saddr;
		__u32 remote = sk->__sk_common.skc_daddr;
		__builtin_memcpy(t->local, &local, 4);
		__builtin_memcpy(t->remote, &remote, 4);
	} else {
		t->family = 6;
		bpf_probe_read_kernel(t->local, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(t->remote, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(bh_sock_state, const struct sock *sk, int oldstate, int newstate)
{
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	__u16 family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	if (other_netns(sk->__sk_common.skc_net.net->net_cookie))
		return 0;
	__u64 cookie = bpf_get_socket_cookie((void *)sk);

	if (newstate == TCP_LISTEN) {
		struct bh_owner *owner = bpf_map_lookup_elem(&owners, &cookie);
		if (!owner)
			return 0;
		struct bh_port_key key = { .port = sk->__sk_common.skc_num, .proto = IPPROTO_TCP };
		if (bpf_map_update_elem(&ports, &key, owner, BPF_ANY))
			count(BH_SC_PORT_MAP_FULL);
		return 0;
	}

	struct bh_sock_tuple tuple = {};
	read_tuple(sk, &tuple);

	if (newstate == TCP_ESTABLISHED) {
		struct bh_conn conn = {};
		struct bh_owner *owner;
		conn.cookie = cookie;
		if (oldstate == TCP_SYN_RECV) {
			/* Accepted: the owner is whoever listens on the local port. */
			struct bh_port_key key = { .port = tuple.lport, .proto = IPPROTO_TCP };
			conn.is_server = 1;
			owner = bpf_map_lookup_elem(&ports, &key);
		} else {
			owner = bpf_map_lookup_elem(&owners, &cookie);
		}
		if (owner) {
			conn.owner = *owner;
			conn.has_owner = 1;
		} else {
			count(BH_SC_NO_OWNER);
		}
		if (bpf_map_update_elem(&conns, &tuple, &conn, BPF_ANY))
			count(BH_SC_CONN_MAP_FULL);
		return 0;
	}

	if (newstate == TCP_CLOSE && oldstate != TCP_LISTEN) {
		struct bh_close_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
		if (!ev) {
			count(BH_SC_EVENTS_FULL);
			return 0;
		}
		__builtin_memset(ev, 0, sizeof(*ev));
		ev->kind = BH_EV_CLOSE;
		ev->tuple = tuple;
		struct bh_conn *conn = bpf_map_lookup_elem(&conns, &tuple);
		if (conn) {
			ev->conn = *conn;
		} else {
			struct bh_owner *owner = bpf_map_lookup_elem(&owners, &cookie);
			ev->conn.cookie = cookie;
			if (owner) {
				ev->conn.owner = *owner;
				ev->conn.has_owner = 1;
			}
		}
		bpf_ringbuf_submit(ev, 0);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
