//! Flow records as JSON lines for people and scripts (`bulkhead gen --to stdout`, the
//! collector's `--stdout`): addresses as text, enums as words, unknowns omitted.

use serde_json::{Map, Value, json};

use crate::lake::{decision_text, direction_text};
use crate::policy::protocol;
use crate::proto::FlowRecord;

/// One flow record as a JSON object.
pub fn flow_record(record: &FlowRecord) -> Value {
    let ip = |bytes: &[u8]| {
        crate::ip::from_bytes(bytes).map_or(Value::Null, |ip| Value::String(ip.to_string()))
    };
    let mut object = json!({
        "host_id": record.host_id,
        "interface": record.interface,
        "direction": direction_text(record.direction),
        "src_ip": ip(&record.src_ip),
        "dst_ip": ip(&record.dst_ip),
        "src_port": record.src_port,
        "dst_port": record.dst_port,
        "protocol": protocol::name(record.protocol).map_or_else(|| record.protocol.to_string(), str::to_string),
        "packets": record.packets,
        "bytes": record.bytes,
        "tcp_flags": record.tcp_flags,
        "first_seen_unix_ns": record.first_seen_unix_ns,
        "last_seen_unix_ns": record.last_seen_unix_ns,
        "closed": record.closed,
        "local_is_server": record.local_is_server,
    });
    let map: &mut Map<String, Value> = object.as_object_mut().expect("json! built an object");
    let mut optional = |key: &str, value: Value, present: bool| {
        if present {
            map.insert(key.to_string(), value);
        }
    };
    optional("pid", json!(record.pid), record.pid != 0);
    optional(
        "process_name",
        json!(record.process_name),
        !record.process_name.is_empty(),
    );
    optional(
        "executable",
        json!(record.executable),
        !record.executable.is_empty(),
    );
    optional("cgroup_id", json!(record.cgroup_id), record.cgroup_id != 0);
    optional(
        "dns_name",
        json!(record.remote_dns_name),
        !record.remote_dns_name.is_empty(),
    );
    optional(
        "sampling_rate",
        json!(record.sampling_rate),
        record.sampling_rate > 1,
    );
    optional(
        "policy_decision",
        json!(decision_text(record.policy_decision)),
        record.policy_decision != 0,
    );
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_text_and_unknowns_are_omitted() {
        let record = FlowRecord {
            src_ip: vec![10, 0, 0, 1],
            dst_ip: "fd00::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec(),
            protocol: 17,
            direction: 2,
            ..Default::default()
        };
        let value = flow_record(&record);
        assert_eq!(value["src_ip"], "10.0.0.1");
        assert_eq!(value["dst_ip"], "fd00::2");
        assert_eq!(value["protocol"], "udp");
        assert_eq!(value["direction"], "egress");
        assert!(value.get("pid").is_none() && value.get("process_name").is_none());
    }
}
