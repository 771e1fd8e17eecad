//! Settings shared by every command: flags > `BULKHEAD_*` environment > TOML file >
//! defaults. The file is read and checked before any command starts, so a broken config
//! is reported (with its path and the problem) before anything touches the world.

use std::path::PathBuf;

use anyhow::Context as _;
use bulkhead_kafka::{KafkaArgs, KafkaConfig, KafkaFileConfig};
use serde::Deserialize;

/// Flags every command takes (listed under their own heading in each command's help,
/// after the command's own flags).
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Config and logging (every command)")]
pub struct GlobalArgs {
    /// TOML config file (sections: `[kafka]`, `[collector]`).
    #[arg(
        long,
        short = 'c',
        env = "BULKHEAD_CONFIG",
        value_name = "FILE",
        global = true
    )]
    pub config: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. info or bulkhead_kafka=debug. The
    /// default is Bulkhead's own info and other crates' warnings: their info (delta-rs's
    /// kernel, DataFusion) runs to pages per command.
    #[arg(
        long,
        env = "BULKHEAD_LOG",
        default_value = DEFAULT_LOG,
        value_name = "FILTER",
        global = true
    )]
    pub log: String,
    /// Log line format.
    #[arg(
        long,
        env = "BULKHEAD_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(flatten, next_help_heading = "Kafka (every command)")]
    pub kafka: KafkaArgs,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The TOML config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub kafka: Option<KafkaFileConfig>,
    #[serde(default)]
    pub collector: Option<bulkhead_collector::CollectorFileConfig>,
}

/// Everything a command needs, resolved.
#[derive(Debug)]
pub struct Settings {
    pub kafka: KafkaConfig,
    /// The `[collector]` table, checked when `bulkhead collect` resolves its flags.
    pub collector: Option<bulkhead_collector::CollectorFileConfig>,
}

impl Settings {
    pub fn load(args: &GlobalArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
            }
        };
        let kafka = KafkaConfig::resolve(&args.kafka, file.kafka.as_ref())?;
        Ok(Self {
            kafka,
            collector: file.collector,
        })
    }
}

/// Bulkhead's crates at info, everything else at warn.
pub const DEFAULT_LOG: &str = "warn,bulkhead=info,bulkhead_kafka=info,bulkhead_collector=info,\
bulkhead_ingest=info,bulkhead_analytics=info,bulkhead_recommender=info,bulkhead_policy=info,\
bulkhead_enforcer=info,bulkhead_schemas=info";

/// Logs go to stderr through `tracing`, as text (coloured on a terminal) or JSON lines.
pub fn init_tracing(args: &GlobalArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|e| {
        eprintln!(
            "bulkhead: --log {:?} is not a valid filter ({e}); using {DEFAULT_LOG}",
            args.log
        );
        tracing_subscriber::EnvFilter::new(DEFAULT_LOG)
    });
    // Colours only on a terminal: a log file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    std::panic::set_hook(Box::new(log_panic));
}

/// A panic goes through `tracing` too, as an ERROR with the thread and the place (and a
/// backtrace when `RUST_BACKTRACE` asks for one): JSON logs stay JSON lines, and a panic
/// is found where the other errors are.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = bulkhead_schemas::panic_message(payload).unwrap_or("(no message)");
    let place = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("unnamed");
    if is_caught_abort_of_failed_upload(message, &place) {
        tracing::debug!(
            thread,
            place,
            "object_store refused to abort an upload that had already failed (delta-rs catches this; the write's error follows)"
        );
        return;
    }
    let backtrace = std::backtrace::Backtrace::capture();
    let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
        .then(|| backtrace.to_string());
    tracing::error!(thread, place, backtrace, "panicked: {message}");
}

/// The one panic Bulkhead knows to be caught: when a Parquet file cannot be written (a
/// full disk), delta-rs aborts the upload, object_store's `BufWriter::abort` panics
/// because the upload already ended, and delta-rs catches that. Logged as a panic, it
/// read as ingest crashing on every retry while the disk was full.
fn is_caught_abort_of_failed_upload(message: &str, place: &str) -> bool {
    message == "Already shut down"
        && place.contains("object_store")
        && place.contains("buffered.rs")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_panic_is_one_json_error_line_with_its_thread_and_place() {
        let lines = Lines::default();
        let writer = lines.clone();
        // The hook is the process's: set only around this panic, which is caught.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(log_panic));
        let caught = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                let subscriber = tracing_subscriber::fmt()
                    .json()
                    .with_writer(move || writer.clone())
                    .finish();
                tracing::subscriber::with_default(subscriber, || {
                    std::panic::catch_unwind(|| panic!("boom {}", 42))
                })
            })
            .unwrap()
            .join()
            .unwrap();
        std::panic::set_hook(previous);
        assert!(caught.is_err());
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        assert_eq!(events.len(), 1, "{text}");
        assert_eq!(events[0]["level"], "ERROR");
        assert_eq!(events[0]["fields"]["message"], "panicked: boom 42");
        assert_eq!(events[0]["fields"]["thread"], "committer");
        let place = events[0]["fields"]["place"].as_str().unwrap();
        assert!(place.starts_with("src/config.rs:"), "{place}");
    }

    #[test]
    fn only_object_stores_abort_after_a_failed_upload_counts_as_caught() {
        let place = "/root/.cargo/registry/src/x/object_store-0.13.2/src/buffered.rs:369:41";
        assert!(is_caught_abort_of_failed_upload("Already shut down", place));
        assert!(!is_caught_abort_of_failed_upload("boom", place));
        assert!(!is_caught_abort_of_failed_upload(
            "Already shut down",
            "src/main.rs:1:1"
        ));
    }
}
