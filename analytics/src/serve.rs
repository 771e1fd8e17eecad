//! `bulkhead serve`: the HTTP API (+ console assets, + routers mounted by other
//! components) and Arrow Flight SQL, over one [`Engine`].
//!
//! Configure ([`ServeArgs`] → [`ServeConfig`], validated without side effects), build
//! ([`Server::builder`], [`ServerBuilder::merge`] for extra routers), then
//! [`ServerBuilder::start`] binds the listeners and serves until the shutdown future
//! completes.
//!
//! ```no_run
//! # async fn demo(engine: bulkhead_analytics::Engine, config: bulkhead_analytics::serve::ServeConfig,
//! #               policy_router: axum::Router) -> anyhow::Result<()> {
//! use bulkhead_analytics::serve::Server;
//! let running = Server::builder(engine, config)
//!     .merge(policy_router) // e.g. bulkhead_policy::router(state): /api/v1/recommendations, ...
//!     .start(async { let _ = tokio::signal::ctrl_c().await; })
//!     .await?;
//! running.wait().await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use tokio::task::JoinHandle;

use crate::cli::EngineArgs;
use crate::engine::Engine;
use crate::http::{self, ApiState};
use crate::queries::RowLimits;

/// `bulkhead serve` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// HTTP API (and console) listen address.
    #[arg(long, env = "BULKHEAD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Arrow Flight SQL listen address (empty: no Flight SQL).
    #[arg(
        long,
        env = "BULKHEAD_FLIGHT_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub flight_listen: String,
    /// Bearer token clients must send (required unless every listener is on loopback).
    #[arg(long, env = "BULKHEAD_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (instead of --token).
    #[arg(long, env = "BULKHEAD_API_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) for HTTP and Flight SQL; needs --tls-key.
    #[arg(long, env = "BULKHEAD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "BULKHEAD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The console's built assets (served at /, unknown paths get index.html).
    #[arg(long, env = "BULKHEAD_CONSOLE_DIR", default_value = "console/dist")]
    pub console_dir: PathBuf,
    /// Most rows one API call returns.
    #[arg(long, env = "BULKHEAD_API_MAX_ROWS", default_value_t = 100_000)]
    pub max_rows: usize,
}

/// TLS certificate and key files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Resolved `serve` settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub flight_listen: Option<SocketAddr>,
    pub token: Option<String>,
    pub tls: Option<TlsFiles>,
    pub console_dir: Option<PathBuf>,
    pub rows: RowLimits,
}

impl ServeConfig {
    /// Loopback HTTP on `listen`, no Flight SQL, no token, no TLS, no console.
    pub fn local(listen: SocketAddr) -> Self {
        Self {
            listen,
            flight_listen: None,
            token: None,
            tls: None,
            console_dir: None,
            rows: RowLimits {
                default: 1000,
                max: 100_000,
            },
        }
    }

    /// Resolves and checks the flags (reads the token file, nothing else).
    pub fn from_args(args: &ServeArgs) -> anyhow::Result<Self> {
        let flight_listen = match args.flight_listen.trim() {
            "" => None,
            text => Some(
                text.parse()
                    .map_err(|e| anyhow::anyhow!("--flight-listen {text:?}: {e}"))?,
            ),
        };
        let token = match (&args.token, &args.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--token-file {}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        if args.max_rows == 0 {
            anyhow::bail!("--max-rows must be at least 1");
        }
        let config = Self {
            listen: args.listen,
            flight_listen,
            token,
            tls,
            console_dir: Some(args.console_dir.clone()),
            rows: RowLimits {
                default: 1000.min(args.max_rows),
                max: args.max_rows,
            },
        };
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }

    /// The rules: a token unless every listener is on loopback; a non-empty token.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(t) = &self.token
            && t.is_empty()
        {
            return Err("the API token is empty".into());
        }
        let exposed: Vec<SocketAddr> = std::iter::once(self.listen)
            .chain(self.flight_listen)
            .filter(|a| !a.ip().is_loopback())
            .collect();
        if self.token.is_none() && !exposed.is_empty() {
            return Err(format!(
                "{} is reachable from other hosts: give a bearer token (--token, --token-file or BULKHEAD_API_TOKEN), or listen on 127.0.0.1",
                exposed
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
        if let Some(tls) = &self.tls {
            for (what, path) in [("--tls-cert", &tls.cert), ("--tls-key", &tls.key)] {
                if !path.is_file() {
                    return Err(format!("{what} {}: no such file", path.display()));
                }
            }
        }
        Ok(())
    }
}

/// The server: build it with [`Server::builder`].
pub struct Server;

impl Server {
    pub fn builder(engine: Engine, config: ServeConfig) -> ServerBuilder {
        ServerBuilder {
            engine,
            config,
            extra: Vec::new(),
        }
    }
}

/// A server being assembled.
pub struct ServerBuilder {
    engine: Engine,
    config: ServeConfig,
    extra: Vec<Router>,
}

/// A started server: its bound addresses, and the task serving them.
pub struct Running {
    pub http_addr: SocketAddr,
    pub flight_addr: Option<SocketAddr>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the server stops (after the shutdown future completed).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the server task panicked")?
    }
}

impl ServerBuilder {
    /// Mounts another component's routes (paths as they are, e.g. `/api/v1/policy/...`).
    /// The bearer token, when configured, guards them like the analytics routes.
    pub fn merge(mut self, router: Router) -> Self {
        self.extra.push(router);
        self
    }

    /// The whole HTTP application.
    pub fn router(&self) -> Router {
        let state = ApiState {
            engine: self.engine.clone(),
            rows: self.config.rows,
        };
        let mut protected = http::api_routes(state.clone());
        for router in &self.extra {
            protected = protected.merge(router.clone());
        }
        protected = protected.merge(http::api_not_found());
        if let Some(token) = &self.config.token {
            protected = protected.route_layer(axum::middleware::from_fn_with_state(
                Arc::new(token.clone()),
                http::require_token,
            ));
        }
        let mut app = http::public_routes(state).merge(protected);
        match &self.config.console_dir {
            Some(dir) if dir.join("index.html").is_file() => {
                let assets = tower_http::services::ServeDir::new(dir)
                    .fallback(tower_http::services::ServeFile::new(dir.join("index.html")));
                app = app.fallback_service(assets);
            }
            other => {
                let note = match other {
                    Some(dir) => format!(
                        "the console is not built: {} has no index.html (build it in console/)",
                        dir.display()
                    ),
                    None => "this server has no console".to_string(),
                };
                app = app.fallback(move || {
                    let note = note.clone();
                    async move {
                        http::ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", note)
                    }
                });
            }
        }
        app.layer(axum::middleware::from_fn(http::count_requests))
    }

    /// Binds the listeners and serves until `shutdown` completes.
    pub async fn start(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Running> {
        self.config.validate().map_err(anyhow::Error::msg)?;
        let _ = http::prometheus();
        let app = self.router();
        let http_listener = std::net::TcpListener::bind(self.config.listen)
            .with_context(|| format!("cannot listen on {} (--listen)", self.config.listen))?;
        http_listener.set_nonblocking(true)?;
        let http_addr = http_listener.local_addr()?;
        let flight_listener = match self.config.flight_listen {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (--flight-listen)"))?;
                Some(l)
            }
            None => None,
        };
        let flight_addr = flight_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };

        let tls = match &self.config.tls {
            Some(files) => {
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                Some(files.clone())
            }
            None => None,
        };

        let http_task: JoinHandle<anyhow::Result<()>> = match &tls {
            Some(files) => {
                let config =
                    axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)
                        .await
                        .with_context(|| {
                            format!(
                                "TLS certificate {} / key {}",
                                files.cert.display(),
                                files.key.display()
                            )
                        })?;
                let handle = axum_server::Handle::new();
                let server =
                    axum_server::from_tcp_rustls(http_listener, config)?.handle(handle.clone());
                let stop = stopped();
                tokio::spawn(async move {
                    stop.await;
                    handle.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
                });
                tokio::spawn(async move {
                    server
                        .serve(app.into_make_service())
                        .await
                        .context("HTTPS server")
                })
            }
            None => {
                let listener = tokio::net::TcpListener::from_std(http_listener)?;
                let stop = stopped();
                tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await
                        .context("HTTP server")
                })
            }
        };
        tracing::info!(%http_addr, tls = tls.is_some(), token = self.config.token.is_some(), "HTTP API listening");

        let flight_task: Option<JoinHandle<anyhow::Result<()>>> = match flight_listener {
            Some(listener) => {
                let mut builder = tonic::transport::Server::builder();
                if let Some(files) = &tls {
                    let cert = std::fs::read(&files.cert)
                        .with_context(|| format!("--tls-cert {}", files.cert.display()))?;
                    let key = std::fs::read(&files.key)
                        .with_context(|| format!("--tls-key {}", files.key.display()))?;
                    builder = builder
                        .tls_config(
                            tonic::transport::ServerTlsConfig::new()
                                .identity(tonic::transport::Identity::from_pem(cert, key)),
                        )
                        .context("Flight SQL TLS configuration")?;
                }
                let service =
                    crate::flight::service(self.engine.clone(), self.config.token.clone());
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let stop = stopped();
                tracing::info!(addr = ?flight_addr, "Flight SQL listening");
                Some(tokio::spawn(async move {
                    builder
                        .add_service(service)
                        .serve_with_incoming_shutdown(incoming, stop)
                        .await
                        .context("Flight SQL server")
                }))
            }
            None => None,
        };

        let task = tokio::spawn(async move {
            let http = http_task.await.context("the HTTP task panicked")?;
            if let Some(flight) = flight_task {
                flight.await.context("the Flight SQL task panicked")??;
            }
            http
        });
        Ok(Running {
            http_addr,
            flight_addr,
            task,
        })
    }
}
