//! `bulkhead`: one binary for every Bulkhead role. Thin by design: it parses flags and
//! the config file, sets up logging, and calls into the component crates. Every command
//! listed here works; components add theirs as they land.

mod commands;
mod config;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::GlobalArgs;

/// The stack of the runtime's threads, where queries are planned and run.
const QUERY_THREAD_STACK: usize = 16 << 20;

/// mimalloc instead of glibc malloc: ingest builds buffers on its loop thread and frees
/// them on the committer's, where glibc's arena locks and consolidation took ~28 % of the
/// CPU; DataFusion's hash tables gain too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Zero Trust micro-segmentation: eBPF flow capture, a Kafka event log, a flow lake you
/// query with SQL, recommended label-based policy, and nftables enforcement.
#[derive(Parser)]
#[command(
    name = "bulkhead",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// The commands, one per role (an explicit registry: what is listed works).
#[derive(Subcommand)]
enum Command {
    /// Generate a seeded synthetic estate's inventory and flows; publish them or print them.
    Gen(commands::gen_flows::GenArgs),
    /// Create or list Bulkhead's Kafka topics.
    #[command(subcommand)]
    Topics(commands::topics::TopicsCommand),
    /// Review, provision, simulate and export policy (through the policy engine's HTTP
    /// API), or work with policy files and signing keys offline.
    #[command(subcommand)]
    Policy(commands::policy::PolicyCommand),
    /// Label workloads through the policy engine's HTTP API.
    #[command(subcommand)]
    Labels(commands::policy_api::LabelsCommand),
    /// Recommend label-based rules from the lake's edges; publish them for review.
    Recommend(commands::recommend::RecommendArgs),
    /// Capture this host's flows with eBPF and publish them (or print them).
    ///
    /// Flows carry the owning process and the DNS name of the remote end; the host
    /// inventory goes to the compacted inventory topic. Needs root and Linux 6.6+.
    Collect(bulkhead_collector::CollectArgs),
    /// Everything on one machine: Kafka topics, ingest, serve with the console, and the
    /// lab estate with an agent on every host; Ctrl-C tears it all down (needs root).
    Demo(commands::demo::DemoArgs),
    /// Enforce the signed policy on this host with nftables (table inet bulkhead), and
    /// report status.
    Enforce(bulkhead_enforcer::EnforceArgs),
    /// The host agent: collect and enforce in one process (as root, on every host).
    Agent(commands::agent::AgentArgs),
    /// Consume flows from Kafka into the lake, exactly once: the `flows` and `edges` Delta
    /// tables, and the `workloads`, `policy` and `status` read models.
    Ingest(bulkhead_ingest::IngestArgs),
    /// Maintain the lake's Delta tables: compact, vacuum, retain, check (safe while ingest
    /// runs).
    #[command(subcommand)]
    Lake(commands::lake::LakeCommand),
    /// A lab estate in network namespaces with real traffic and an agent on every host
    /// (up, traffic, status, down).
    Lab(commands::lab::LabArgs),
    /// Query the lake with SQL (embedded DataFusion): a table, CSV, JSON or Parquet; no
    /// query opens an interactive prompt.
    Sql(bulkhead_analytics::cli::SqlArgs),
    /// Serve the HTTP API, the console and Arrow Flight SQL over the lake, and own the
    /// policy (review, provisioning, signed versions).
    Serve(commands::serve::ServeCommandArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match config::Settings::load(&cli.global) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("bulkhead: {}", bulkhead_schemas::error_line(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    config::init_tracing(&cli.global);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Query planning recurses once per level of an expression; tokio's 2 MiB default
        // holds about 1,500 levels, the analytics engine admits 2,000 (sql_shape.rs).
        // Reserved address space: only the pages a thread touches take memory.
        .thread_stack_size(QUERY_THREAD_STACK)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bulkhead: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Gen(args) => commands::gen_flows::run(&settings, args).await,
            Command::Topics(command) => commands::topics::run(&settings, command).await,
            Command::Policy(command) => commands::policy::run(command).await,
            Command::Labels(command) => commands::policy_api::labels(command).await,
            Command::Recommend(args) => commands::recommend::run(&settings, args).await,
            Command::Demo(args) => commands::demo::run(&settings, args).await,
            Command::Collect(args) => commands::collect::run(&settings, args).await,
            Command::Enforce(args) => commands::enforce::run(&settings, args).await,
            Command::Agent(args) => commands::agent::run(&settings, args).await,
            Command::Ingest(args) => commands::ingest::run(&settings, args).await,
            Command::Lake(command) => commands::lake::run(command).await,
            Command::Lab(args) => {
                tokio::task::block_in_place(|| commands::lab::run(&settings, args))
            }
            Command::Sql(args) => commands::sql::run(args).await,
            Command::Serve(args) => commands::serve::run(&settings, args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead: {}", bulkhead_schemas::error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
