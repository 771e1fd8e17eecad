//! The `edges` table: the application-dependency map, aggregated from enriched flows per
//! tumbling event-time window.
//!
//! Each record is oriented as a connection, client → server, on the server's port:
//! the reporting host knows whether its socket is the server (`local_is_server`), and
//! the record's direction says whether its packets went towards the server (a request)
//! or back (a reply). Collectors at both ends report the same connection; the edge
//! counts it once, from **the server's report**. A client's report counts only when the
//! server is no known workload (the internet, an unmanaged server): a known workload is
//! one whose own agent publishes its inventory, so its collector reports the connection
//! itself. `reporter` says which end a row came from (`dst` = server, `src` = client).
//!
//! Key: (window, client workload or — when unknown — client IP, server workload or IP,
//! server port, protocol, the reporter's process, policy decision, reporter). Values:
//! `flows` (request-direction records: one per connection per collector eviction),
//! `packets` and `bytes` (both directions), first/last seen.
//!
//! **Rows are partial aggregates.** Every lake commit writes the aggregates of the flows
//! it covers, so a window that spans several commits (or several ingest processes, or a
//! late record) has several rows; readers `SUM` them grouped by the key columns. This is
//! what makes the table exactly-once with no window state to lose: a commit's edges are a
//! pure function of the Kafka offsets its `txn` records. Compaction (`bulkhead lake
//! compact`) rewrites files, not rows.
//!
//! Lateness: the watermark is the newest `first_seen` seen by this process minus
//! `--edge-lateness-secs`. A record whose window ended before the watermark is *late*:
//! it still lands in its own window (in the commit that covers its offset — never
//! dropped) and is counted in `bulkhead_ingest_late_flows_total`.

use std::sync::Arc;

use arrow_array::builder::{
    Date32Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::ArrowError;
use bulkhead_schemas::lake::{
    LabelColumns, Labels, NO_SHARED_LABELS, SharedLabels, date_hour, decision_text, edges_schema,
};
use bulkhead_schemas::proto::{Direction, FlowBatch, FlowRecord};
use rustc_hash::FxHashMap;

const NS_PER_US: u64 = 1_000;

/// Tumbling window and allowed lateness, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windowing {
    pub window_us: i64,
    pub lateness_us: i64,
}

impl Default for Windowing {
    fn default() -> Self {
        Self {
            window_us: 60_000_000,
            lateness_us: 300_000_000,
        }
    }
}

/// An edge's key with its texts interned (see [`Names`]): copying and hashing it costs a
/// few words, and looking a record's edge up allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct EdgeKey {
    window_start_us: i64,
    src: EndName,
    dst: EndName,
    dst_port: i32,
    protocol: i32,
    process: Option<NameId>,
    decision: i32,
    reporter: &'static str,
}

/// Index of a text in [`Names`].
type NameId = u32;

/// A connection end in a key: its workload id, or — when no workload is known — its
/// address (as text, so that two spellings of one address cannot make two edges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum EndName {
    Workload(NameId),
    Ip(NameId),
}

/// The distinct texts of the buffered edges (workload ids, addresses, process names),
/// each stored once. Lookups borrow the record's bytes; only a new text allocates.
#[derive(Debug, Default)]
struct Names {
    texts: Vec<Box<str>>,
    by_text: FxHashMap<Box<str>, NameId>,
    by_ip: FxHashMap<Box<[u8]>, NameId>,
}

impl Names {
    fn text(&mut self, text: &str) -> NameId {
        if let Some(id) = self.by_text.get(text) {
            return *id;
        }
        let id = self.texts.len() as NameId;
        self.texts.push(text.into());
        self.by_text.insert(text.into(), id);
        id
    }

    fn ip(&mut self, ip: &[u8]) -> NameId {
        if let Some(id) = self.by_ip.get(ip) {
            return *id;
        }
        let id = self.text(&ip_text(ip));
        self.by_ip.insert(ip.into(), id);
        id
    }

    fn end(&mut self, end: &End<'_>) -> EndName {
        if end.workload.is_empty() {
            EndName::Ip(self.ip(end.ip))
        } else {
            EndName::Workload(self.text(end.workload))
        }
    }

    fn get(&self, id: NameId) -> &str {
        &self.texts[id as usize]
    }
}

#[derive(Clone, Debug)]
struct EdgeValue {
    flows: i64,
    packets: i64,
    bytes: i64,
    first_us: i64,
    last_us: i64,
    src_labels: Arc<Labels>,
    dst_labels: Arc<Labels>,
}

/// What adding a batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Added {
    /// Records aggregated into an edge.
    pub counted: usize,
    /// Client-side reports of connections the server reports itself.
    pub skipped_client_reports: usize,
    /// Records whose window had closed (beyond the lateness) when they arrived.
    pub late: usize,
}

/// One end of a connection, borrowed from a record.
pub struct End<'a> {
    pub ip: &'a [u8],
    pub workload: &'a str,
    pub labels: &'a Labels,
    /// `labels` when they are the inventory's (shared, not copied).
    shared: Option<&'a Arc<Labels>>,
}

impl End<'_> {
    /// The end's labels to keep: the inventory's shared map, or a copy of the record's.
    fn labels_to_keep(&self) -> Arc<Labels> {
        self.shared
            .cloned()
            .unwrap_or_else(|| Arc::new(self.labels.clone()))
    }
}

/// A record as a connection: client end, server end, the server's port, and whether the
/// record's packets went from the server to the client (a reply). `shared`: the labels
/// enrichment found for the record's ends, standing for its own empty ones.
pub fn connection<'a>(
    r: &'a FlowRecord,
    shared: &'a SharedLabels,
) -> (End<'a>, End<'a>, u32, bool) {
    let [src_labels, dst_labels] = shared;
    let src = End {
        ip: &r.src_ip,
        workload: &r.src_workload,
        labels: src_labels.as_deref().unwrap_or(&r.src_labels),
        shared: src_labels.as_ref(),
    };
    let dst = End {
        ip: &r.dst_ip,
        workload: &r.dst_workload,
        labels: dst_labels.as_deref().unwrap_or(&r.dst_labels),
        shared: dst_labels.as_ref(),
    };
    let direction = Direction::try_from(r.direction).unwrap_or(Direction::Unspecified);
    // The packets of this record left the server when the server sent them (egress on
    // the server) or when they arrived at the client (ingress on the client).
    let from_server = if r.local_is_server {
        direction == Direction::Egress
    } else {
        direction == Direction::Ingress
    };
    if from_server {
        (dst, src, r.src_port, true)
    } else {
        (src, dst, r.dst_port, false)
    }
}

/// How one record enters the edges: client end, server end, server port, whether its
/// packets went towards the server, and who reported it. `None`: a client-side report
/// of a connection the server reports itself.
fn orient<'a>(
    r: &'a FlowRecord,
    shared: &'a SharedLabels,
) -> Option<(End<'a>, End<'a>, u32, bool, &'static str)> {
    let (client, server, port, from_server) = connection(r, shared);
    if !r.local_is_server && !server.workload.is_empty() {
        return None;
    }
    let reporter = if r.local_is_server { "dst" } else { "src" };
    Some((client, server, port, !from_server, reporter))
}

fn ip_text(ip: &[u8]) -> String {
    let mut text = String::with_capacity(40);
    bulkhead_schemas::ip::write_text(ip, &mut text);
    text
}

fn micros(unix_ns: u64) -> i64 {
    (unix_ns / NS_PER_US).min(i64::MAX as u64) as i64
}

/// Edge aggregates of the flows one partition buffered since its last commit.
#[derive(Debug, Default)]
pub struct EdgeAggregator {
    edges: FxHashMap<EdgeKey, EdgeValue>,
    names: Names,
}

impl EdgeAggregator {
    /// Distinct edges buffered.
    pub fn len(&self) -> usize {
        self.edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// Aggregates the (enriched, validated) records of `batch`. `watermark_us` is
    /// advanced to the newest `first_seen` minus the lateness; records of windows that
    /// ended before it are counted as late (and still aggregated).
    pub fn add_batch(
        &mut self,
        batch: &FlowBatch,
        shared: &[SharedLabels],
        windowing: Windowing,
        newest_us: &mut i64,
    ) -> Added {
        let mut added = Added::default();
        let window = windowing.window_us.max(1);
        for (i, r) in batch.records.iter().enumerate() {
            let first_us = micros(r.first_seen_unix_ns);
            let last_us = micros(r.last_seen_unix_ns).max(first_us);
            *newest_us = (*newest_us).max(first_us);
            let shared = shared.get(i).unwrap_or(&NO_SHARED_LABELS);
            let Some((client, server, port, request, reporter)) = orient(r, shared) else {
                added.skipped_client_reports += 1;
                continue;
            };
            let window_start_us = first_us.div_euclid(window) * window;
            if window_start_us + window + windowing.lateness_us <= *newest_us {
                added.late += 1;
            }
            let key = EdgeKey {
                window_start_us,
                src: self.names.end(&client),
                dst: self.names.end(&server),
                dst_port: port as i32,
                protocol: r.protocol as i32,
                process: (!r.process_name.is_empty()).then(|| self.names.text(&r.process_name)),
                decision: r.policy_decision,
                reporter,
            };
            let value = self.edges.entry(key).or_insert_with(|| EdgeValue {
                flows: 0,
                packets: 0,
                bytes: 0,
                first_us,
                last_us,
                src_labels: client.labels_to_keep(),
                dst_labels: server.labels_to_keep(),
            });
            value.flows += i64::from(request);
            value.packets += r.packets.min(i64::MAX as u64) as i64;
            value.bytes += r.bytes.min(i64::MAX as u64) as i64;
            value.first_us = value.first_us.min(first_us);
            value.last_us = value.last_us.max(last_us);
            added.counted += 1;
        }
        added
    }

    /// The buffered edges as a `RecordBatch` of [`edges_schema`]; the buffer is emptied.
    pub fn finish(&mut self, windowing: Windowing) -> Result<RecordBatch, ArrowError> {
        let edges = std::mem::take(&mut self.edges);
        let names = std::mem::take(&mut self.names);
        let n = edges.len();
        let ts = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut date = Date32Builder::with_capacity(n);
        let (mut window_start, mut window_end) = (ts(), ts());
        let mut text: Vec<StringBuilder> = (0..4).map(|_| StringBuilder::new()).collect();
        let mut labels = LabelColumns::maps_only(n);
        let mut dst_port = Int32Builder::with_capacity(n);
        let mut protocol = Int32Builder::with_capacity(n);
        let mut process = StringBuilder::new();
        let mut flows = Int64Builder::with_capacity(n);
        let mut packets = Int64Builder::with_capacity(n);
        let mut bytes = Int64Builder::with_capacity(n);
        let (mut first_seen, mut last_seen) = (ts(), ts());
        let mut decision = StringBuilder::new();
        let mut reporter = StringBuilder::new();
        for (key, value) in edges {
            let start_ns = (key.window_start_us.max(0) as u64).saturating_mul(NS_PER_US);
            date.append_value(date_hour(start_ns).0);
            window_start.append_value(key.window_start_us);
            window_end.append_value(key.window_start_us + windowing.window_us);
            for (builders, end) in text.chunks_mut(2).zip([key.src, key.dst]) {
                let (workload, ip) = match end {
                    EndName::Workload(id) => (Some(names.get(id)), None),
                    EndName::Ip(id) => (None, Some(names.get(id))),
                };
                builders[0].append_option(workload);
                builders[1].append_option(ip);
            }
            labels.append_shared(0, &value.src_labels);
            labels.append_shared(1, &value.dst_labels);
            dst_port.append_value(key.dst_port);
            protocol.append_value(key.protocol);
            process.append_option(key.process.map(|id| names.get(id)));
            flows.append_value(value.flows);
            packets.append_value(value.packets);
            bytes.append_value(value.bytes);
            first_seen.append_value(value.first_us);
            last_seen.append_value(value.last_us);
            decision.append_value(decision_text(key.decision));
            reporter.append_value(key.reporter);
        }
        let [src_workload, src_ip, dst_workload, dst_ip] =
            <[StringBuilder; 4]>::try_from(text).map_err(|_| internal())?;
        let [src_labels, dst_labels] = labels.finish()?.maps;
        let finish = |mut b: StringBuilder| -> ArrayRef { Arc::new(b.finish()) };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(date.finish()),
            Arc::new(window_start.finish()),
            Arc::new(window_end.finish()),
            finish(src_workload),
            finish(src_ip),
            finish(dst_workload),
            finish(dst_ip),
            src_labels,
            dst_labels,
            Arc::new(dst_port.finish()),
            Arc::new(protocol.finish()),
            finish(process),
            Arc::new(flows.finish()),
            Arc::new(packets.finish()),
            Arc::new(bytes.finish()),
            Arc::new(first_seen.finish()),
            Arc::new(last_seen.finish()),
            finish(decision),
            finish(reporter),
        ];
        RecordBatch::try_new(edges_schema(), columns)
    }
}

fn internal() -> ArrowError {
    ArrowError::ComputeError("edge builders miscounted (a bug in bulkhead-ingest)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array as _;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type};

    const T0: u64 = 1_764_115_200_000_000_000; // 2025-11-26T00:00Z

    fn rec(host: &str, dir: Direction, server: bool, at_s: u64, bytes: u64) -> FlowRecord {
        FlowRecord {
            host_id: host.into(),
            direction: dir as i32,
            ip_version: 4,
            src_ip: vec![10, 0, 0, 1],
            dst_ip: vec![10, 0, 0, 2],
            src_port: 40000,
            dst_port: 5432,
            protocol: 6,
            packets: 2,
            bytes,
            first_seen_unix_ns: T0 + at_s * 1_000_000_000,
            last_seen_unix_ns: T0 + at_s * 1_000_000_000 + 5,
            local_is_server: server,
            src_workload: "api".into(),
            dst_workload: "db".into(),
            process_name: if server { "postgres" } else { "java" }.into(),
            ..Default::default()
        }
    }

    fn rows(agg: &mut EdgeAggregator, w: Windowing) -> Vec<(String, String, i64, i64, i64)> {
        let b = agg.finish(w).unwrap();
        let s = |c: &str, i: usize| {
            let col = b.column_by_name(c).unwrap().as_string::<i32>();
            if col.is_null(i) {
                String::new()
            } else {
                col.value(i).to_string()
            }
        };
        let n = |c: &str, i: usize| {
            b.column_by_name(c)
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(i)
        };
        let mut out: Vec<_> = (0..b.num_rows())
            .map(|i| {
                (
                    format!("{}{}", s("src_workload", i), s("src_ip", i)),
                    format!(
                        "{}{}>{}",
                        s("dst_workload", i),
                        s("dst_ip", i),
                        s("reporter", i)
                    ),
                    n("flows", i),
                    n("bytes", i),
                    b.column_by_name("window_start")
                        .unwrap()
                        .as_primitive::<arrow_array::types::TimestampMicrosecondType>()
                        .value(i),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn both_ends_count_once_from_the_server_and_replies_add_bytes_not_flows() {
        let w = Windowing::default();
        let mut agg = EdgeAggregator::default();
        let mut newest = 0;
        // Client (api) egress request, server (db) ingress request, server egress reply.
        let mut reply = rec("db", Direction::Egress, true, 1, 300);
        std::mem::swap(&mut reply.src_ip, &mut reply.dst_ip);
        std::mem::swap(&mut reply.src_port, &mut reply.dst_port);
        std::mem::swap(&mut reply.src_workload, &mut reply.dst_workload);
        let batch = FlowBatch {
            records: vec![
                rec("api", Direction::Egress, false, 1, 100),
                rec("db", Direction::Ingress, true, 2, 100),
                reply,
            ],
            ..Default::default()
        };
        let added = agg.add_batch(&batch, &[], w, &mut newest);
        assert_eq!((added.counted, added.skipped_client_reports), (2, 1));
        let start = (T0 / 1000) as i64;
        assert_eq!(
            rows(&mut agg, w),
            vec![("api".into(), "db>dst".into(), 1, 400, start)]
        );
        assert!(agg.is_empty(), "finish empties the buffer");
    }

    /// api's report of a request to an address that is no workload.
    fn report_to_an_unknown_server() -> FlowRecord {
        let mut record = rec("api", Direction::Egress, false, 1, 70);
        record.dst_workload.clear();
        record.dst_ip = vec![203, 0, 113, 9];
        record
    }

    #[test]
    fn shared_labels_stand_for_a_records_empty_label_maps() {
        let w = Windowing::default();
        let mut agg = EdgeAggregator::default();
        let mut newest = 0;
        let mut record = report_to_an_unknown_server();
        record.src_labels.clear();
        // A second edge (another port) whose client carries its own labels.
        let mut own = report_to_an_unknown_server();
        own.dst_port = 6432;
        own.src_labels = [("app".to_string(), "own".to_string())].into();
        let batch = FlowBatch {
            records: vec![record, own],
            ..Default::default()
        };
        let crm = Arc::new([("app".to_string(), "crm".to_string())].into());
        agg.add_batch(&batch, &[[Some(crm), None]], w, &mut newest);
        let rows = agg.finish(w).unwrap();
        let ports = rows
            .column_by_name("dst_port")
            .unwrap()
            .as_primitive::<Int32Type>();
        let row = |port: i32| ports.values().iter().position(|&p| p == port).unwrap();
        let labels = rows.column_by_name("src_labels").unwrap().as_map();
        let app = |i: usize| {
            let entries = labels.value(i);
            assert_eq!(entries.len(), 1);
            assert_eq!(entries.column(0).as_string::<i32>().value(0), "app");
            entries.column(1).as_string::<i32>().value(0).to_string()
        };
        assert_eq!(app(row(5432)), "crm");
        assert_eq!(app(row(6432)), "own");
        // The unknown server has no labels: NULL, not an empty map.
        let dst_labels = rows.column_by_name("dst_labels").unwrap();
        assert_eq!(dst_labels.null_count(), 2);
    }

    #[test]
    fn unknown_servers_count_the_client_report_and_stay_ips() {
        let w = Windowing::default();
        let mut agg = EdgeAggregator::default();
        let mut newest = 0;
        let batch = FlowBatch {
            records: vec![report_to_an_unknown_server()],
            ..Default::default()
        };
        agg.add_batch(&batch, &[], w, &mut newest);
        assert_eq!(
            rows(&mut agg, w),
            vec![(
                "api".into(),
                "203.0.113.9>src".into(),
                1,
                70,
                (T0 / 1000) as i64
            )]
        );
    }

    #[test]
    fn windows_tumble_and_late_records_still_land_in_their_window() {
        let w = Windowing {
            window_us: 60_000_000,
            lateness_us: 60_000_000,
        };
        let mut agg = EdgeAggregator::default();
        let mut newest = 0;
        let batch = |at: u64| FlowBatch {
            records: vec![rec("db", Direction::Ingress, true, at, 10)],
            ..Default::default()
        };
        assert_eq!(agg.add_batch(&batch(59), &[], w, &mut newest).late, 0);
        assert_eq!(agg.add_batch(&batch(60), &[], w, &mut newest).late, 0);
        assert_eq!(agg.add_batch(&batch(300), &[], w, &mut newest).late, 0);
        // Window [0, 60) ended 240 s before the newest record: beyond the lateness.
        assert_eq!(agg.add_batch(&batch(5), &[], w, &mut newest).late, 1);
        let got = rows(&mut agg, w);
        let start = (T0 / 1000) as i64;
        let mut flows: Vec<(i64, i64)> = got.iter().map(|r| (r.4 - start, r.2)).collect();
        flows.sort();
        assert_eq!(flows, vec![(0, 2), (60_000_000, 1), (300_000_000, 1)]);
    }
}
