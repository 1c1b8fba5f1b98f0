//! `qiaomen-server`: serves sync on 127.0.0.1:8080 with an embedded SQLite store in
//! `./qiaomen-data` unless told otherwise.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "qiaomen-server", version, about = "The Qiaomen sync server")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "QIAOMEN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Folder of the embedded SQLite store.
    #[arg(long, env = "QIAOMEN_DATA_DIR", default_value = "./qiaomen-data")]
    data_dir: PathBuf,
    /// Household documents kept in memory.
    #[arg(long, env = "QIAOMEN_CACHE_DOCS", default_value_t = 2000)]
    cache_docs: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = qiaomen_server::Config::new(args.listen, args.data_dir);
    config.ingest.cache_capacity = args.cache_docs;
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
