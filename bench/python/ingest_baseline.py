"""The baseline of `bench ingest`: a straightforward Python pipeline doing ingest's job.

Consumes the flows topic with confluent-kafka, decodes every FlowBatch with protobuf,
enriches both ends from the inventory topic (address -> host id and labels), aggregates
the edges per tumbling window (server's report preferred, as ingest does), and writes
zstd Parquet files of the flows rows and the edges with pyarrow every 500,000 flows.
Prints one JSON line: {"flows": N, "seconds": S} (S excludes protoc and the inventory).
"""

import argparse
import ipaddress
import json
import os
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
from grpc_tools import protoc


def generated(proto_root):
    out = tempfile.mkdtemp(prefix="bulkhead-pb-")
    rc = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}",
                      "bulkhead/v1/flow.proto", "bulkhead/v1/inventory.proto"])
    if rc != 0:
        sys.exit(f"protoc failed on {proto_root}")
    sys.path.insert(0, out)
    from bulkhead.v1 import flow_pb2, inventory_pb2  # noqa: E402
    return flow_pb2, inventory_pb2


def load_inventory(brokers, topic, inventory_pb2):
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"py-inv-{os.getpid()}",
                         "enable.auto.commit": False})
    meta = consumer.list_topics(topic, timeout=10)
    parts = list(meta.topics[topic].partitions)
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    owners = {}
    remaining = {p for p, high in ends.items() if high > 0}
    while remaining:
        msg = consumer.poll(5)
        if msg is None or msg.error():
            continue
        inv = inventory_pb2.HostInventory()
        inv.ParseFromString(msg.value())
        for iface in inv.interfaces:
            for cidr in iface.addresses:
                owners[cidr.split("/")[0]] = (inv.host_id, dict(inv.labels))
        if msg.offset() + 1 >= ends[msg.partition()]:
            remaining.discard(msg.partition())
    consumer.close()
    return owners


COLUMNS = ["date", "hour", "host_id", "direction", "src_ip", "dst_ip", "src_port", "dst_port",
           "protocol", "packets", "bytes", "first_seen", "last_seen", "process_name",
           "dns_name", "src_workload", "dst_workload", "src_labels", "dst_labels",
           "policy_decision", "agent_instance_id", "batch_seq"]
STANDARD_LABEL_KEYS = ["role", "app", "env", "loc"]
COLUMNS += [f"{end}_{key}" for end in ("src", "dst") for key in STANDARD_LABEL_KEYS]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--flows-topic", required=True)
    ap.add_argument("--inventory-topic", required=True)
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--window-secs", type=int, default=60)
    ap.add_argument("--proto", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    flow_pb2, inventory_pb2 = generated(args.proto)
    owners = load_inventory(args.brokers, args.inventory_topic, inventory_pb2)
    os.makedirs(args.out, exist_ok=True)

    started = time.perf_counter()
    consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": f"py-flows-{os.getpid()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.message.max.bytes": 16 * 1024 * 1024})
    consumer.subscribe([args.flows_topic])
    window_us = args.window_secs * 1_000_000
    rows = {c: [] for c in COLUMNS}
    edges = {}
    seen = 0
    files = 0

    def flush():
        nonlocal rows, edges, files
        if rows["host_id"]:
            pq.write_table(pa.table(rows), os.path.join(args.out, f"flows-{files}.parquet"),
                           compression="zstd")
        if edges:
            keys = list(edges.keys())
            values = list(edges.values())
            table = pa.table({
                "window_start": [k[0] for k in keys], "src": [k[1] for k in keys],
                "dst": [k[2] for k in keys], "dst_port": [k[3] for k in keys],
                "protocol": [k[4] for k in keys], "process": [k[5] for k in keys],
                "flows": [v[0] for v in values], "packets": [v[1] for v in values],
                "bytes": [v[2] for v in values],
                "first_seen": [v[3] for v in values], "last_seen": [v[4] for v in values],
            })
            pq.write_table(table, os.path.join(args.out, f"edges-{files}.parquet"),
                           compression="zstd")
        files += 1
        rows = {c: [] for c in COLUMNS}
        edges = {}

    directions = {0: "unspecified", 1: "ingress", 2: "egress"}
    while seen < args.expect:
        for msg in consumer.consume(num_messages=500, timeout=1.0):
            if msg.error():
                continue
            batch = flow_pb2.FlowBatch()
            batch.ParseFromString(msg.value())
            for r in batch.records:
                src = str(ipaddress.ip_address(r.src_ip))
                dst = str(ipaddress.ip_address(r.dst_ip))
                src_owner = owners.get(src)
                dst_owner = owners.get(dst)
                first_us = r.first_seen_unix_ns // 1000
                rows["date"].append(first_us // 86_400_000_000)
                rows["hour"].append(first_us // 3_600_000_000 % 24)
                rows["host_id"].append(r.host_id or batch.host_id)
                rows["direction"].append(directions.get(r.direction, "unspecified"))
                rows["src_ip"].append(src)
                rows["dst_ip"].append(dst)
                rows["src_port"].append(r.src_port)
                rows["dst_port"].append(r.dst_port)
                rows["protocol"].append(r.protocol)
                rows["packets"].append(r.packets)
                rows["bytes"].append(r.bytes)
                rows["first_seen"].append(first_us)
                rows["last_seen"].append(r.last_seen_unix_ns // 1000)
                rows["process_name"].append(r.process_name or None)
                rows["dns_name"].append(r.remote_dns_name or None)
                rows["src_workload"].append(src_owner[0] if src_owner else None)
                rows["dst_workload"].append(dst_owner[0] if dst_owner else None)
                rows["src_labels"].append(list(src_owner[1].items()) if src_owner else None)
                rows["dst_labels"].append(list(dst_owner[1].items()) if dst_owner else None)
                rows["policy_decision"].append("unknown")
                rows["agent_instance_id"].append(batch.agent_instance_id)
                rows["batch_seq"].append(batch.batch_seq)
                for end, owner in (("src", src_owner), ("dst", dst_owner)):
                    for key in STANDARD_LABEL_KEYS:
                        rows[f"{end}_{key}"].append(owner[1].get(key) if owner else None)
                # Edges: client -> server, counted from the server's report.
                from_server = (r.direction == 2) if r.local_is_server else (r.direction == 1)
                if from_server:
                    client, server, port = (dst, dst_owner), (src, src_owner), r.src_port
                else:
                    client, server, port = (src, src_owner), (dst, dst_owner), r.dst_port
                if not r.local_is_server and server[1]:
                    continue
                window = first_us // window_us * window_us
                key = (window, client[1][0] if client[1] else client[0],
                       server[1][0] if server[1] else server[0], port, r.protocol,
                       r.process_name or None)
                v = edges.get(key)
                if v is None:
                    edges[key] = [0 if from_server else 1, r.packets, r.bytes, first_us,
                                  r.last_seen_unix_ns // 1000]
                else:
                    v[0] += 0 if from_server else 1
                    v[1] += r.packets
                    v[2] += r.bytes
                    v[3] = min(v[3], first_us)
                    v[4] = max(v[4], r.last_seen_unix_ns // 1000)
            seen += len(batch.records)
            if len(rows["host_id"]) >= 500_000:
                flush()
    flush()
    seconds = time.perf_counter() - started
    consumer.close()
    print(json.dumps({"flows": seen, "seconds": seconds}))


if __name__ == "__main__":
    main()
