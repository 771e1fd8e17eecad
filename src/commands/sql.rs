//! `bulkhead sql`: SQL over the lake, embedded (no server needed).

pub async fn run(args: bulkhead_analytics::cli::SqlArgs) -> anyhow::Result<()> {
    bulkhead_analytics::cli::run_sql(args).await
}
