//! `bulkhead sql`: the engine embedded in the CLI — one query, or an interactive prompt
//! with history.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::catalog::LakeLocation;
use crate::engine::{Engine, QueryError};
use crate::limits::Limits;
use crate::output::{self, Format};

/// The lake and the limits every query runs under (shared by `sql` and `serve`).
#[derive(Clone, Debug, clap::Args)]
pub struct EngineArgs {
    /// The lake holding the Delta tables: a local directory, a file:// URL, or an S3 prefix
    /// (`s3://bucket/lake`; credentials, region and endpoint from the `AWS_*` variables).
    #[arg(long, env = "BULKHEAD_LAKE", value_name = "DIR|URL")]
    pub lake: String,
    /// Memory for all queries together (MiB).
    #[arg(
        long = "memory",
        env = "BULKHEAD_QUERY_MEMORY_TOTAL_MIB",
        default_value_t = 2048
    )]
    pub memory_mib: usize,
    /// Memory for one query (MiB); a query needing more fails with an error.
    #[arg(
        long = "query-memory",
        env = "BULKHEAD_QUERY_MEMORY_MIB",
        default_value_t = 512
    )]
    pub query_memory_mib: usize,
    /// Time limit of one query (seconds).
    #[arg(long, env = "BULKHEAD_QUERY_TIMEOUT_SECS", default_value_t = 300.0)]
    pub query_timeout: f64,
}

impl EngineArgs {
    /// The lake location named by `--lake`.
    pub fn location(&self) -> anyhow::Result<LakeLocation> {
        Ok(LakeLocation::parse(&self.lake)?)
    }

    pub fn limits(&self) -> anyhow::Result<Limits> {
        if !(self.query_timeout.is_finite() && self.query_timeout > 0.0) {
            anyhow::bail!(
                "--query-timeout {}: must be a positive number of seconds",
                self.query_timeout
            );
        }
        let limits = Limits {
            memory_bytes: self.memory_mib << 20,
            query_memory_bytes: self.query_memory_mib << 20,
            query_timeout: Duration::from_secs_f64(self.query_timeout),
        };
        limits
            .validate()
            .map_err(|e| anyhow::anyhow!("--memory / --query-memory: {e}"))?;
        Ok(limits)
    }

    /// Builds the engine.
    pub fn engine(&self) -> anyhow::Result<Engine> {
        Engine::new(self.location()?, self.limits()?).map_err(anyhow::Error::msg)
    }
}

/// `bulkhead sql` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct SqlArgs {
    /// The SQL query; without it, an interactive prompt opens (history in
    /// ~/.bulkhead_sql_history; end a statement with `;`, `\d` lists tables, `\q` quits).
    pub query: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value = "table")]
    pub format: Format,
    /// Write the result to this file instead of stdout (required for parquet).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs `bulkhead sql`.
pub async fn run_sql(args: SqlArgs) -> anyhow::Result<()> {
    if args.format == Format::Parquet && args.output.is_none() {
        anyhow::bail!("--format parquet writes a file: give it with --output FILE");
    }
    let engine = args.engine.engine()?;
    if let Some(root) = engine.lake().location().local_dir()
        && !root.is_dir()
    {
        anyhow::bail!(
            "--lake {}: no such directory (ingest creates it on its first commit)",
            root.display()
        );
    }
    match &args.query {
        Some(sql) => run_one(&engine, sql, args.format, args.output.as_deref()).await,
        None => repl(&engine, args.format).await,
    }
}

async fn run_one(
    engine: &Engine,
    sql: &str,
    format: Format,
    output_path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let df = engine.plan(sql).await.map_err(sql_error)?;
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let batches = engine.collect_planned(df, sql).await.map_err(sql_error)?;
    let mut out: Box<dyn std::io::Write + Send> = match output_path {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("--output {}: {e}", path.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    };
    output::write(format, &schema, &batches, &mut out)
        .map_err(|e| anyhow::anyhow!("writing the result: {e}"))?;
    out.flush()?;
    Ok(())
}

fn sql_error(e: QueryError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

async fn repl(engine: &Engine, format: Format) -> anyhow::Result<()> {
    let format = if format == Format::Parquet {
        Format::Table
    } else {
        format
    };
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| anyhow::anyhow!("cannot open the interactive prompt: {e}"))?;
    let history = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".bulkhead_sql_history"))
        .unwrap_or_else(|| PathBuf::from(".bulkhead_sql_history"));
    let _ = editor.load_history(&history);
    eprintln!(
        "bulkhead sql over {} — tables: {}. End statements with ';', \\d lists tables, \\q quits.",
        engine.lake().location().url(),
        engine.tables().await?.join(", ")
    );
    let mut statement = String::new();
    loop {
        let prompt = if statement.is_empty() {
            "sql> "
        } else {
            "  -> "
        };
        let line = tokio::task::block_in_place(|| editor.readline(prompt));
        let line = match line {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                statement.clear();
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => anyhow::bail!("reading the prompt: {e}"),
        };
        let trimmed = line.trim();
        if statement.is_empty() {
            match trimmed {
                "" => continue,
                "\\q" | "quit" | "exit" => break,
                "\\d" => {
                    let _ = editor.add_history_entry(trimmed);
                    match engine.tables().await {
                        Ok(tables) => println!("{}", tables.join("\n")),
                        Err(e) => eprintln!("error: {e}"),
                    }
                    continue;
                }
                _ => {}
            }
            if let Some(table) = trimmed.strip_prefix("\\d ") {
                let _ = editor.add_history_entry(trimmed);
                statement = format!("DESCRIBE {};", table.trim());
            }
        }
        if !trimmed.starts_with("\\d") {
            statement.push_str(&line);
            statement.push('\n');
        }
        if !statement.trim_end().ends_with(';') {
            continue;
        }
        let sql = statement.trim().trim_end_matches(';').to_string();
        statement.clear();
        let _ = editor.add_history_entry(format!("{sql};"));
        let started = Instant::now();
        match run_one(engine, &sql, format, None).await {
            Ok(()) => eprintln!("({:.3} s)", started.elapsed().as_secs_f64()),
            Err(e) => eprintln!("error: {}", bulkhead_schemas::error_line(e.as_ref())),
        }
    }
    let _ = editor.save_history(&history);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser};

    #[derive(Parser)]
    enum Cli {
        Sql(super::SqlArgs),
        Serve(crate::serve::ServeArgs),
    }

    #[test]
    fn flags_are_consistent_and_parse() {
        Cli::command().debug_assert();
        let Cli::Sql(args) =
            Cli::try_parse_from(["x", "sql", "SELECT 1", "--lake", "/tmp/l", "-f", "csv"]).unwrap()
        else {
            panic!("sql")
        };
        assert_eq!(args.query.as_deref(), Some("SELECT 1"));
        assert_eq!(args.format, crate::output::Format::Csv);
        assert!(args.engine.limits().is_ok());
        let Cli::Serve(args) = Cli::try_parse_from([
            "x",
            "serve",
            "--lake",
            "/tmp/l",
            "--listen",
            "0.0.0.0:8080",
            "--token",
            "t",
        ])
        .unwrap() else {
            panic!("serve")
        };
        let config = crate::serve::ServeConfig::from_args(&args).unwrap();
        assert_eq!(config.token.as_deref(), Some("t"));
        let Cli::Serve(args) =
            Cli::try_parse_from(["x", "serve", "--lake", "/tmp/l", "--listen", "0.0.0.0:8080"])
                .unwrap()
        else {
            panic!("serve")
        };
        let err = crate::serve::ServeConfig::from_args(&args).unwrap_err();
        assert!(err.to_string().contains("bearer token"), "{err}");
        assert!(
            Cli::try_parse_from(["x", "serve", "--lake", "l", "--tls-cert", "c.pem"]).is_err(),
            "a certificate needs its key"
        );
        let s3 = crate::catalog::LakeLocation::parse("s3://bucket/lake").unwrap();
        assert_eq!(s3.table_url("flows").as_str(), "s3://bucket/lake/flows/");
        assert!(s3.local_dir().is_none());
        let err = crate::catalog::LakeLocation::parse("ftp://host/lake")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--lake") && err.contains("\"ftp\""), "{err}");
    }
}
