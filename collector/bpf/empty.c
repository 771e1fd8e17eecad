// SPDX-License-Identifier: GPL-2.0-only
/*
 * The baseline of the collector's benchmarks: a TC program that does nothing, so that
 * BPF_PROG_TEST_RUN and veth throughput measure what flows.c adds on top of the cost of
 * running any program at all.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("classifier")
int bh_tc_empty(struct __sk_buff *skb)
{
	return -1; /* TCX_NEXT */
}

char LICENSE[] SEC("license") = "GPL";
