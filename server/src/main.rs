//! `qiaomen-server`: serves sync on 127.0.0.1:8080 with an embedded SQLite store in
//! `./qiaomen-data` unless told otherwise; `qiaomen-server admin …` manages the org, users and
//! devices in the same store.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "qiaomen-server", version, about = "The Qiaomen sync server")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "QIAOMEN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Folder of the embedded SQLite store.
    #[arg(
        long,
        env = "QIAOMEN_DATA_DIR",
        default_value = "./qiaomen-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Keep everything in this PostgreSQL database (`postgres://user@host:port/db`) instead
    /// of the embedded store: several servers may serve one database. The data folder then
    /// holds only the server's lock.
    #[arg(long, env = "QIAOMEN_DATABASE", global = true, value_parser = postgres_url)]
    database: Option<String>,
    /// Household documents kept in memory, per writer.
    #[arg(long, env = "QIAOMEN_CACHE_DOCS", default_value_t = 2000)]
    cache_docs: usize,
    /// Operations of the documents kept in memory, per writer, all together (what a
    /// document costs in memory grows with its operations).
    #[arg(long, env = "QIAOMEN_CACHE_OPS", default_value_t = 1_000_000)]
    cache_ops: u64,
    /// The page cache of each SQLite connection, in KiB (about ten are open; SQLite's
    /// default is 2000). Lower it on a small machine: reads then come from the OS's cache.
    #[arg(long, env = "QIAOMEN_SQLITE_CACHE_KIB")]
    sqlite_cache_kib: Option<u32>,
    /// A JSON file of workflow settings: work-order time limits in working days, holidays
    /// and make-up working days, the visit rotation and catch-up days (see
    /// `server/workflow.example.json`). Defaults apply to whatever it leaves out.
    #[arg(long, env = "QIAOMEN_WORKFLOW")]
    workflow: Option<PathBuf>,
    /// Largest request body in bytes, for every route but sync and the hotline import (which
    /// have their own documented limits).
    #[arg(long, env = "QIAOMEN_BODY_LIMIT", default_value_t = qiaomen_server::http::edge::DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// Seconds a client has to send a request's headers; an idle kept-alive connection is
    /// closed after as long.
    #[arg(long, env = "QIAOMEN_HEADER_TIMEOUT", default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds the server waits for the next bytes of a request body before answering 408 and
    /// closing the connection.
    #[arg(long, env = "QIAOMEN_BODY_TIMEOUT", default_value_t = 30.0)]
    body_timeout: f64,
    /// Connections open at once from one address (a trusted proxy is not limited).
    #[arg(long, env = "QIAOMEN_MAX_CONNECTIONS_PER_PEER", default_value_t = 64)]
    max_connections_per_peer: usize,
    /// A reverse proxy (address or CIDR) whose X-Forwarded-For / X-Real-IP name the client;
    /// repeat it, or separate with commas. Without it the TCP peer is the client.
    #[arg(long, env = "QIAOMEN_TRUST_PROXY", value_delimiter = ',', value_parser = qiaomen_server::http::edge::parse_cidr)]
    trust_proxy: Vec<ipnet::IpNet>,
    /// The server is reached over HTTPS (at the reverse proxy): the session cookie is
    /// `Secure` and named `__Host-qiaomen_session`.
    #[arg(long, env = "QIAOMEN_PUBLIC_HTTPS")]
    public_https: bool,
    /// Serve HTTPS with this certificate chain (PEM; the server's certificate first). Needs
    /// `--tls-key`. Implies `--public-https`.
    #[arg(long, env = "QIAOMEN_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "QIAOMEN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A file holding the token Prometheus presents (`Authorization: Bearer …`) to scrape
    /// `GET /metrics`. Without it there is no metrics route.
    #[arg(long, env = "QIAOMEN_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<PathBuf>,
    /// Send phones their downloads as Automerge's chunks, not packed (SYNC-v1 §4.4.1):
    /// packing costs the server ~0.2 ms a change and saves a visit day's download a third of
    /// its bytes (BENCHMARKS.md).
    #[arg(long, env = "QIAOMEN_NO_PACKED_DOWNLOADS")]
    no_packed_downloads: bool,
    /// `GET /readyz` answers 503 while the read model leaves changes older than this many
    /// seconds uncounted.
    #[arg(long, env = "QIAOMEN_READY_LAG", default_value_t = 120)]
    ready_lag: u64,
    /// `text` (for people) or `json` (one object a line, for a log collector).
    /// Where photos are kept: files under `<data-dir>/photos` (the default), or an
    /// S3-compatible bucket, `s3://bucket/prefix` (QIAOMEN_S3_ENDPOINT, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION), for several servers.
    #[arg(long, env = "QIAOMEN_PHOTOS")]
    photos: Option<String>,
    /// Photo bytes each device may upload per UTC day, in MiB.
    #[arg(long, env = "QIAOMEN_PHOTO_QUOTA_MIB", default_value_t = 200)]
    photo_quota_mib: u64,
    #[arg(long, env = "QIAOMEN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Manage org units, users, assignments, enrollment codes and devices.
    Admin(qiaomen_server::admin::AdminArgs),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if let Some(Command::Admin(admin)) = args.command {
        let target = match &args.database {
            Some(url) => qiaomen_server::admin::Target::Postgres(url),
            None => qiaomen_server::admin::Target::Embedded(&args.data_dir),
        };
        return qiaomen_server::admin::run_on(target, admin.command).map_err(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        });
    }
    qiaomen_server::process::tune_allocator();
    qiaomen_server::process::runtime()?.block_on(serve(args))
}

async fn serve(args: Args) -> Result<(), BoxError> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let metrics_token = match &args.metrics_token_file {
        None => None,
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .map_err(|e| format!("reading the metrics token file {}: {e}", path.display()))?;
            if token.trim().len() < 16 {
                return Err(format!(
                    "the metrics token in {} must be at least 16 characters",
                    path.display()
                )
                .into());
            }
            Some(qiaomen_server::http::ops::MetricsToken::new(&token))
        }
    };
    if let Some(kib) = args.sqlite_cache_kib {
        qiaomen_server::storage::set_page_cache_kib(kib);
    }
    let mut config = qiaomen_server::Config::new(args.listen, args.data_dir);
    config.database = args.database;
    config.photos = args
        .photos
        .as_deref()
        .map(qiaomen_server::blobs::S3Settings::from_env);
    config.photo_quota_bytes = args.photo_quota_mib.saturating_mul(1024 * 1024);
    config.ingest.cache_capacity = args.cache_docs;
    config.ingest.cache_ops = args.cache_ops;
    config.packed_downloads = !args.no_packed_downloads;
    let seconds = |s: f64, what: &str| {
        std::time::Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("--{what} must be a positive number of seconds"))
    };
    config.edge = qiaomen_server::http::edge::EdgeConfig {
        body_limit: args.body_limit,
        header_read_timeout: seconds(args.header_timeout, "header-timeout")?,
        body_read_timeout: seconds(args.body_timeout, "body-timeout")?,
        max_connections_per_peer: args.max_connections_per_peer.max(1),
        trust_proxy: args.trust_proxy,
        public_https: args.public_https || args.tls_cert.is_some(),
        metrics_token,
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(qiaomen_server::http::edge::tls_config(cert, key)?),
            _ => None,
        },
        ready_lag: std::time::Duration::from_secs(args.ready_lag),
    };
    if let Some(path) = &args.workflow {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the workflow file {}: {e}", path.display()))?;
        config.workflow = serde_json::from_str(&text)
            .map_err(|e| format!("the workflow file {} is not valid: {e}", path.display()))?;
    }
    let server = qiaomen_server::start(config, async {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    })
    .await?;
    server.wait().await?;
    Ok(())
}

/// A `--database` value: a PostgreSQL URL (its password, if any, is never printed).
fn postgres_url(s: &str) -> Result<String, String> {
    if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
        return Err("a PostgreSQL URL, postgres://user@host:port/database".into());
    }
    s.parse::<tokio_postgres::Config>()
        .map_err(|_| "not a PostgreSQL URL: postgres://user@host:port/database".to_string())?;
    Ok(s.to_string())
}
