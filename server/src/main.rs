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
    /// Household documents kept in memory.
    #[arg(long, env = "QIAOMEN_CACHE_DOCS", default_value_t = 2000)]
    cache_docs: usize,
    /// A JSON file of workflow settings: work-order time limits in working days, holidays
    /// and make-up working days, the visit rotation and catch-up days (see
    /// `server/workflow.example.json`). Defaults apply to whatever it leaves out.
    #[arg(long, env = "QIAOMEN_WORKFLOW")]
    workflow: Option<PathBuf>,
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    if let Some(Command::Admin(admin)) = args.command {
        return qiaomen_server::admin::run(&args.data_dir, admin.command).map_err(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        });
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut config = qiaomen_server::Config::new(args.listen, args.data_dir);
    config.ingest.cache_capacity = args.cache_docs;
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
