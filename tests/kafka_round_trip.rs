//! A FlowBatch of 10,000 records through the real broker: produced, consumed back,
//! decoded, converted to Arrow, and equal field by field.

use std::net::IpAddr;
use std::time::Duration;

use arrow_array::cast::AsArray as _;
use arrow_array::types::{Date32Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array as _, RecordBatch};
use bulkhead_bench::workload::{Estate, FlowSpec};
use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::rdkafka::Message as _;
use bulkhead_kafka::{Consumer, ConsumerOptions, Producer, require_kafka};
use bulkhead_schemas::lake::{self, FlowColumns};
use bulkhead_schemas::proto::{FlowBatch, FlowRecord};
use bulkhead_schemas::topics::Topic;
use prost::Message as _;

fn ten_thousand_records() -> FlowBatch {
    let estate = Estate::generate(11, 40);
    let spec = FlowSpec {
        seed: 5,
        records: 10_000,
        start_unix_ns: 1_764_115_200_123_456_789,
        span_ns: 7_200_000_000_000,
        batch_records: 10_000,
    };
    let mut records: Vec<FlowRecord> = estate.flows(&spec).flat_map(|b| b.records).collect();
    assert_eq!(records.len(), 10_000);
    // Exercise what the generator leaves out: enrichment fields and odd values.
    records[0].src_labels = [
        ("app".to_string(), "crm".to_string()),
        ("env".into(), "prod".into()),
    ]
    .into();
    records[0].dst_ip_lists = vec!["internet".into(), "cdn".into()];
    records[0].remote_dns_name = "api.example.com".into();
    records[1].packets = u64::MAX / 4;
    records[2].cgroup_id = u64::MAX; // stored bit for bit in a signed column
    FlowBatch {
        schema_version: 1,
        host_id: "host-round-trip".into(),
        agent_instance_id: "instance-1".into(),
        batch_seq: 77,
        created_unix_ns: 1_764_115_300_000_000_000,
        records,
        dropped_flows: 3,
    }
}

/// Every column of row `i` equals what record `r` says.
fn assert_row_matches(rows: &RecordBatch, i: usize, r: &FlowRecord, batch: &FlowBatch) {
    let col = |name: &str| {
        rows.column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let s = |name: &str| col(name).as_string::<i32>();
    let i32c = |name: &str| col(name).as_primitive::<Int32Type>();
    let i64c = |name: &str| col(name).as_primitive::<Int64Type>();
    let ts = |name: &str| {
        col(name)
            .as_primitive::<TimestampMicrosecondType>()
            .value(i)
    };
    let text_or_null = |name: &str, expected: &str| {
        if expected.is_empty() {
            assert!(col(name).is_null(i), "{name} row {i}")
        } else {
            assert_eq!(s(name).value(i), expected, "{name} row {i}")
        }
    };
    let ip = |name: &str| s(name).value(i).parse::<IpAddr>().unwrap();

    let (date, hour) = lake::date_hour(r.first_seen_unix_ns);
    assert_eq!(col("date").as_primitive::<Date32Type>().value(i), date);
    assert_eq!(i32c("hour").value(i), hour);
    assert_eq!(s("host_id").value(i), r.host_id);
    text_or_null("interface", &r.interface);
    assert_eq!(i32c("ifindex").value(i), r.ifindex as i32);
    assert_eq!(s("direction").value(i), lake::direction_text(r.direction));
    assert_eq!(i32c("ip_version").value(i), r.ip_version as i32);
    assert_eq!(
        ip("src_ip"),
        bulkhead_schemas::ip::from_bytes(&r.src_ip).unwrap()
    );
    assert_eq!(
        ip("dst_ip"),
        bulkhead_schemas::ip::from_bytes(&r.dst_ip).unwrap()
    );
    assert_eq!(i32c("src_port").value(i), r.src_port as i32);
    assert_eq!(i32c("dst_port").value(i), r.dst_port as i32);
    assert_eq!(i32c("protocol").value(i), r.protocol as i32);
    assert_eq!(i64c("packets").value(i) as u64, r.packets);
    assert_eq!(i64c("bytes").value(i) as u64, r.bytes);
    assert_eq!(i32c("tcp_flags").value(i), r.tcp_flags as i32);
    assert_eq!(ts("first_seen"), (r.first_seen_unix_ns / 1000) as i64);
    assert_eq!(ts("last_seen"), (r.last_seen_unix_ns / 1000) as i64);
    assert_eq!(
        i32c("sampling_rate").value(i),
        r.sampling_rate.max(1) as i32
    );
    if r.pid == 0 {
        assert!(col("pid").is_null(i))
    } else {
        assert_eq!(i32c("pid").value(i), r.pid as i32)
    }
    text_or_null("process_name", &r.process_name);
    text_or_null("executable", &r.executable);
    if r.cgroup_id == 0 {
        assert!(col("cgroup_id").is_null(i))
    } else {
        assert_eq!(i64c("cgroup_id").value(i) as u64, r.cgroup_id)
    }
    assert_eq!(col("closed").as_boolean().value(i), r.closed);
    assert_eq!(
        col("local_is_server").as_boolean().value(i),
        r.local_is_server
    );
    text_or_null("dns_name", &r.remote_dns_name);
    text_or_null("src_workload", &r.src_workload);
    text_or_null("dst_workload", &r.dst_workload);
    let labels = col("src_labels").as_map();
    if r.src_labels.is_empty() {
        assert!(labels.is_null(i));
    } else {
        let entries = labels.value(i);
        let keys = entries.column(0).as_string::<i32>();
        let values = entries.column(1).as_string::<i32>();
        let got: Vec<(String, String)> = (0..entries.len())
            .map(|j| (keys.value(j).into(), values.value(j).into()))
            .collect();
        let want: Vec<(String, String)> = r.src_labels.clone().into_iter().collect();
        assert_eq!(got, want);
    }
    let lists = col("dst_ip_lists").as_list::<i32>();
    if r.dst_ip_lists.is_empty() {
        assert!(lists.is_null(i));
    } else {
        let items = lists.value(i);
        let got: Vec<&str> = items
            .as_string::<i32>()
            .iter()
            .map(|v| v.unwrap())
            .collect();
        assert_eq!(got, r.dst_ip_lists);
    }
    assert_eq!(
        s("policy_decision").value(i),
        lake::decision_text(r.policy_decision)
    );
    assert!(col("policy_version").is_null(i));
    assert_eq!(s("agent_instance_id").value(i), batch.agent_instance_id);
    assert_eq!(i64c("batch_seq").value(i) as u64, batch.batch_seq);
}

#[tokio::test]
async fn flow_batch_of_10k_records_survives_kafka_and_arrow_field_by_field() {
    let kafka = require_kafka!();
    let config = kafka.config("round-trip");
    admin::ensure_topics(&config, &[Topic::Flows], &TopicOptions::default())
        .await
        .unwrap();
    let topic = config.topic(Topic::Flows);

    let original = ten_thousand_records();
    let payload = original.encode_to_vec();
    let delivery = Producer::new(&config)
        .unwrap()
        .send(&topic, original.host_id.as_bytes(), &payload)
        .await
        .unwrap();

    let consumer = Consumer::new(
        &config,
        &ConsumerOptions::group(format!("{}reader", config.topic_prefix)),
    )
    .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("the batch arrives within 60 s")
        .unwrap();
    assert_eq!(
        (message.partition(), message.offset()),
        (delivery.partition, delivery.offset)
    );
    assert_eq!(
        message.key(),
        Some(original.host_id.as_bytes()),
        "keyed by host id"
    );
    let decoded = FlowBatch::decode(message.payload().unwrap()).unwrap();
    assert_eq!(
        decoded, original,
        "protobuf round trip through Kafka is lossless"
    );

    let mut columns = FlowColumns::with_capacity(decoded.records.len());
    columns.append_batch(&decoded).unwrap();
    let rows = columns.finish().unwrap();
    assert_eq!(rows.num_rows(), 10_000);
    assert_eq!(rows.schema(), lake::flows_schema());
    for (i, record) in original.records.iter().enumerate() {
        assert_row_matches(&rows, i, record, &original);
    }
}
