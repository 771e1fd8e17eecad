//! The Delta writer against a real table in a temporary directory, and the whole loop
//! in-process against the real broker.

use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray as _;
use arrow_array::types::Int64Type;
use bulkhead_bench::workload::{Estate, FlowSpec};
use bulkhead_ingest::writer::{FlowsTable, app_id, sort_rows};
use bulkhead_ingest::{IngestConfig, Summary};
use bulkhead_kafka::admin::{self, TopicOptions};
use bulkhead_kafka::{Producer, require_kafka};
use bulkhead_schemas::lake::FlowColumns;
use bulkhead_schemas::lake::lake_url;
use bulkhead_schemas::proto::FlowBatch;
use bulkhead_schemas::topics::Topic;
use datafusion::prelude::SessionContext;
use prost::Message as _;

fn flows(seed: u64, records: u64) -> Vec<FlowBatch> {
    let estate = Estate::generate(seed, 20);
    estate
        .flows(&FlowSpec {
            seed,
            records,
            start_unix_ns: 1_764_115_200_000_000_000,
            span_ns: 2 * 3_600 * 1_000_000_000,
            batch_records: 400,
        })
        .collect()
}

fn rows_of(batches: &[FlowBatch]) -> RecordBatch {
    let mut columns = FlowColumns::default();
    for b in batches {
        columns.append_batch(b).unwrap();
    }
    columns.finish().unwrap()
}

/// count(*), sum(bytes) through DataFusion over deltalake's table provider.
async fn count_and_bytes(table_url: &url::Url) -> Option<(i64, i64)> {
    let table = deltalake::open_table(table_url.clone()).await.ok()?;
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("flows", table.table_provider().await.unwrap())
        .unwrap();
    let out = ctx
        .sql("SELECT count(*), coalesce(sum(bytes), 0) FROM flows")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let v = |c: usize| out[0].column(c).as_primitive::<Int64Type>().value(0);
    Some((v(0), v(1)))
}

#[test]
fn rows_are_sorted_by_ips_then_port() {
    let rows = sort_rows(&rows_of(&flows(1, 2_000))).unwrap();
    let src = rows.column_by_name("src_ip").unwrap().as_string::<i32>();
    let dst = rows.column_by_name("dst_ip").unwrap().as_string::<i32>();
    let port = rows
        .column_by_name("dst_port")
        .unwrap()
        .as_primitive::<arrow_array::types::Int32Type>();
    for i in 1..rows.num_rows() {
        let a = (src.value(i - 1), dst.value(i - 1), port.value(i - 1));
        let b = (src.value(i), dst.value(i), port.value(i));
        assert!(a <= b, "row {i}: {a:?} > {b:?}");
    }
}

/// An empty `flows` table in a lake of its own (removed with the directory).
async fn new_flows_table() -> (tempfile::TempDir, url::Url, FlowsTable) {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake_url(dir.path().to_str().unwrap()).unwrap();
    let url = bulkhead_schemas::lake::table_url(&lake, "flows");
    let table = FlowsTable::open(&url).await.unwrap();
    (dir, url, table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_record_offsets_per_partition_and_rows_read_back() {
    let (_dir, url, mut table) = new_flows_table().await;
    assert_eq!(table.committed_offset("t", 0).await.unwrap(), None);
    let batches = flows(2, 3_000);
    let (first, second) = batches.split_at(batches.len() / 2);
    let a = rows_of(first);
    let b = rows_of(second);
    table
        .commit(a.clone(), "t", &[(0, 41), (1, 7)])
        .await
        .unwrap();
    table.commit(b.clone(), "t", &[(1, 9)]).await.unwrap();

    let mut reopened = FlowsTable::open(&url).await.unwrap();
    reopened.refresh().await.unwrap();
    assert_eq!(reopened.committed_offset("t", 0).await.unwrap(), Some(41));
    assert_eq!(reopened.committed_offset("t", 1).await.unwrap(), Some(9));
    assert_eq!(reopened.committed_offset("t", 2).await.unwrap(), None);
    assert_eq!(app_id("t", 1), "bulkhead-ingest-t-1");

    let bytes: i64 = batches
        .iter()
        .flat_map(|b| &b.records)
        .map(|r| r.bytes as i64)
        .sum();
    assert_eq!(
        count_and_bytes(&url).await,
        Some(((a.num_rows() + b.num_rows()) as i64, bytes))
    );
    // Hive partitions by date and hour; zstd Parquet.
    let files: Vec<String> = reopened.table().get_file_uris().unwrap().collect();
    assert!(
        files.iter().all(|f| f.contains("/date=2025-11-26/hour=")),
        "{files:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_that_cannot_be_written_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"a file where the lake should be").unwrap();
    let lake = lake_url(blocker.to_str().unwrap()).unwrap();
    let url = bulkhead_schemas::lake::table_url(&lake, "flows");
    let err = match FlowsTable::open(&url).await {
        Ok(mut table) => table
            .commit(rows_of(&flows(3, 100)), "t", &[(0, 1)])
            .await
            .unwrap_err()
            .to_string(),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("not-a-dir"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_ingests_from_kafka_and_commits_on_shutdown() {
    let kafka = require_kafka!();
    let config = kafka.config("ingest-in-process");
    admin::ensure_topics(
        &config,
        &[Topic::Flows, Topic::FlowsDeadLetter],
        &TopicOptions {
            replication: 1,
            partitions: Some(2),
        },
    )
    .await
    .unwrap();
    let batches = flows(4, 8_000);
    let producer = Producer::new(&config).unwrap();
    for b in &batches {
        producer
            .send(
                &config.topic(Topic::Flows),
                b.host_id.as_bytes(),
                &b.encode_to_vec(),
            )
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let lake = lake_url(dir.path().to_str().unwrap()).unwrap();
    let ingest_config = IngestConfig {
        lake: lake.clone(),
        group_id: "in-process".into(),
        // Longer than the test: size commits at 3,000 and 6,000 rows, the rest at shutdown.
        commit_interval: Duration::from_secs(600),
        commit_flows: 3_000,
        commit_bytes: 1 << 30,
        retry_max: Duration::from_secs(1),
        windowing: bulkhead_ingest::edges::Windowing::default(),
        policy_public_key: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let config = config.clone();
        async move {
            bulkhead_ingest::run(ingest_config, &config, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    let url = bulkhead_schemas::lake::table_url(&lake, "flows");
    let deadline = Instant::now() + Duration::from_secs(90);
    while count_and_bytes(&url).await.map_or(0, |(n, _)| n) < 6_000 {
        assert!(Instant::now() < deadline, "no size commits within 90 s");
        assert!(!task.is_finished(), "ingest stopped early");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The last 2,000 rows are buffered (below the size, before the interval): the
    // shutdown commit writes them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send(()).unwrap();
    let summary: Summary = task.await.unwrap().unwrap();
    assert_eq!(summary.rows_written, 8_000, "{summary:?}");
    assert!(summary.commits >= 3, "{summary:?}");
    assert_eq!(count_and_bytes(&url).await.map(|(n, _)| n), Some(8_000));
}

/// `bulkhead lake check`'s work: a healthy table passes; a deleted, a truncated and a
/// footer-damaged file are each named with their problem; repair drops only the missing
/// one from the table, in one commit, and a query then reads the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_missing_and_unreadable_files_and_repair_drops_the_missing() {
    use bulkhead_ingest::maintenance::check;
    let (_dir, url, mut table) = new_flows_table().await;
    let batches = flows(4, 4_000);
    for (offset, part) in batches.chunks(batches.len() / 3 + 1).enumerate() {
        table
            .commit(rows_of(part), "t", &[(0, offset as i64)])
            .await
            .unwrap();
    }
    let files: Vec<std::path::PathBuf> = table
        .table()
        .get_file_uris()
        .unwrap()
        .map(|uri| std::path::PathBuf::from(uri.strip_prefix("file://").unwrap_or(&uri)))
        .collect();
    assert!(files.len() >= 4, "{files:?}");
    let reads = std::sync::atomic::AtomicUsize::new(0);
    let healthy = check(&url, false, |_, _| {
        reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .await
    .unwrap();
    assert!(healthy.is_healthy(), "{healthy:?}");
    assert_eq!(healthy.files, files.len());
    assert_eq!(reads.into_inner(), files.len(), "a footer read per file");

    let name = |path: &std::path::Path| path.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::remove_file(&files[0]).unwrap();
    let truncated = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &truncated[..1000]).unwrap();
    let mut damaged = std::fs::read(&files[2]).unwrap();
    let end = damaged.len();
    damaged[end - 20..end - 8].fill(b'x'); // the footer's last bytes of metadata
    std::fs::write(&files[2], damaged).unwrap();

    let found = check(&url, false, |_, _| {}).await.unwrap();
    assert!(!found.is_healthy());
    assert_eq!(found.missing.len(), 1, "{found:?}");
    assert!(found.missing[0].ends_with(&name(&files[0])), "{found:?}");
    assert!(!found.repaired);
    assert_eq!(found.unreadable.len(), 2, "{found:?}");
    let problem = |file: &std::path::Path| {
        let bad = found
            .unreadable
            .iter()
            .find(|bad| bad.path.ends_with(&name(file)));
        bad.unwrap_or_else(|| panic!("{} not reported: {found:?}", name(file)))
            .problem
            .clone()
    };
    assert!(problem(&files[1]).contains("has 1000 bytes"), "{found:?}");
    assert!(!problem(&files[2]).is_empty());

    let repaired = check(&url, true, |_, _| {}).await.unwrap();
    assert!(
        repaired.repaired && repaired.missing.len() == 1,
        "{repaired:?}"
    );
    assert!(!repaired.is_healthy(), "the unreadable files remain");
    let after = check(&url, false, |_, _| {}).await.unwrap();
    assert!(after.missing.is_empty(), "{after:?}");
    assert_eq!(after.files, files.len() - 1);
    assert_eq!(after.unreadable.len(), 2);
}
