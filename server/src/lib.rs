//! The Qiaomen sync server: merges what the phones bring back.
//!
//! - [`http`]: the axum router (`POST /v1/sync`, `GET /healthz`), typed error bodies;
//! - [`service`]: the operations the JSON API, the pages and the hotline import share, returning
//!   a domain error that [`http`] maps to a status in one place;
//! - [`ingest`]: the writer threads (households sharded across them) that check, apply and
//!   group-commit uploads;
//! - [`storage`]: the change log's [`storage::Storage`] trait, its embedded SQLite backend and its
//!   PostgreSQL backend, and the conformance suite both pass.
//!
//! [`start`] runs a server on a listener; `main.rs` is a thin command line over it.

pub mod access;
pub mod admin;
pub mod backup;
pub mod blobs;
pub mod charts;
pub mod hotline;
pub mod http;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod migrate;
pub mod orders;
pub mod panics;
pub mod process;
pub mod service;
pub mod sql;
pub mod stats;
pub mod storage;
pub mod tasks;
pub mod thumbs;
pub mod vocab;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use tokio::{net::TcpListener, sync::oneshot};

/// What a server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub ingest: ingest::IngestOptions,
    /// About how many bytes of changes one sync response carries before it sets `more`
    /// (default [`qiaomen_protocol::wire::limits::RESPONSE_BUDGET_BYTES`]).
    pub response_budget: usize,
    /// A first sync gets each household as one whole document, to a phone that takes them
    /// (SYNC-v1 §7.3.1). On by default; off, every change is sent as it was logged.
    pub whole_docs: bool,
    /// Changes go down packed to a phone that takes them (SYNC-v1 §4.4.1). On by default;
    /// off, every change goes as Automerge's chunk.
    pub packed_downloads: bool,
    /// Work-order deadlines and the visit rotation.
    pub workflow: index::Workflow,
    /// Body limits, timeouts, connections per peer, trusted proxies, TLS.
    pub edge: http::edge::EdgeConfig,
    /// A PostgreSQL database (`postgres://user@host:port/db`) to keep everything in instead
    /// of the embedded store in `data_dir`: several servers may share one.
    pub database: Option<String>,
    /// Where photos are kept: `None`, files under `<data_dir>/photos`; `s3://bucket/prefix`,
    /// an S3-compatible bucket several servers share ([`blobs::Blobs::s3`]).
    pub photos: Option<blobs::S3Settings>,
    /// Photo bytes each device may have accepted per UTC day.
    pub photo_quota_bytes: u64,
}

impl Config {
    /// The defaults: 127.0.0.1:8080, `./qiaomen-data`.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen,
            data_dir: data_dir.into(),
            ingest: Default::default(),
            response_budget: qiaomen_protocol::wire::limits::RESPONSE_BUDGET_BYTES,
            whole_docs: true,
            packed_downloads: true,
            workflow: Default::default(),
            edge: Default::default(),
            database: None,
            photos: None,
            photo_quota_bytes: 200 * 1024 * 1024,
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    writers: Vec<std::thread::JoinHandle<()>>,
    /// Held while the server runs: no second server (or restore) on the same store.
    _lock: backup::DataLock,
}

impl RunningServer {
    /// Stops accepting connections, lets in-flight syncs finish, then waits for the writer
    /// to drain.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let res = (&mut self.task).await.map_err(std::io::Error::other)?;
        let writers = std::mem::take(&mut self.writers);
        tokio::task::spawn_blocking(move || writers.into_iter().for_each(|w| drop(w.join())))
            .await
            .ok();
        res
    }

    /// Waits until the server stops by itself.
    pub async fn wait(mut self) -> std::io::Result<()> {
        let res = (&mut self.task).await.map_err(std::io::Error::other)?;
        let writers = std::mem::take(&mut self.writers);
        tokio::task::spawn_blocking(move || writers.into_iter().for_each(|w| drop(w.join())))
            .await
            .ok();
        res
    }
}

/// Connections to PostgreSQL beyond one per writer thread: readers, the access tables and the
/// read model share them.
const PG_READERS: usize = 8;

/// Every server on one database runs with the same workflow settings (deadlines and
/// holidays judge work orders, the rotation judges coverage): the first to start records its
/// own, and a server started with others refuses to start.
fn agree_on_workflow(
    db: &access::AccessDb,
    workflow: &index::Workflow,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let agreed = db.agreed_setting(index::WORKFLOW_SETTING, &serde_json::to_string(workflow)?)?;
    if serde_json::from_str::<index::Workflow>(&agreed)
        .ok()
        .as_ref()
        != Some(workflow)
    {
        return Err("the workflow settings (--workflow) differ from those recorded in the database for every server: start this server with the same settings as the others, or record new ones with `qiaomen-server --database … admin workflow set FILE` and restart each server with that file".into());
    }
    Ok(())
}

/// Opens the store and serves on `config.listen` (port 0 picks a free port), stopping when
/// `stop` resolves or [`RunningServer::shutdown`] is called.
pub async fn start(
    config: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunningServer, Box<dyn std::error::Error + Send + Sync>> {
    let lock = backup::DataLock::try_take(&config.data_dir)?.ok_or_else(|| {
        format!(
            "another qiaomen-server is serving {}; one server per data folder",
            config.data_dir.display()
        )
    })?;
    let metrics = Arc::new(metrics::Metrics::new());
    let mut ingest_options = config.ingest.clone();
    ingest_options.group_sizes = Some(metrics.write_groups.clone());
    let writers = config.ingest.writers.max(1);
    let (writer, writer_threads, readers, access_db, index) = match &config.database {
        None => {
            let storage = storage::SqliteStorage::open(&config.data_dir)?;
            let readers = http::ReaderPool::new(storage.reopen()?);
            let mut storages = Vec::new();
            for _ in 1..writers {
                storages.push(storage.reopen()?);
            }
            storages.push(storage);
            let (writer, threads) = ingest::Writer::start(storages, ingest_options);
            let access_db = access::AccessDb::open(&config.data_dir)?;
            let index = index::Index::open(&config.data_dir, config.workflow.clone())?;
            (writer, threads, readers, access_db, index)
        }
        Some(url) => {
            // Connecting migrates the database, blocking on the handle's own runtime.
            let (url, workflow) = (url.clone(), config.workflow.clone());
            let log = tokio::task::spawn_blocking(move || {
                let log = storage::PgStorage::connect(&url, writers + PG_READERS)?;
                agree_on_workflow(&access::AccessDb::on_postgres(&log), &workflow)?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(log)
            })
            .await??;
            let (writer, threads) =
                ingest::Writer::start(vec![log.clone(); writers], ingest_options);
            let access_db = access::AccessDb::on_postgres(&log);
            let index = index::Index::on_postgres(&log, config.workflow.clone());
            (
                writer,
                threads,
                http::ReaderPool::pooled(log),
                access_db,
                index,
            )
        }
    };
    let photos = Arc::new(match &config.photos {
        None => blobs::Blobs::local(&config.data_dir.join("photos"))?,
        Some(s3) => blobs::Blobs::s3(s3)?,
    });
    panics::install_hook();
    let edge = Arc::new(config.edge.clone());
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let readers = Arc::new(readers);
    let index = Arc::new(std::sync::Mutex::new(index));
    // The register of demand ids, from the read model brought up to the log's end, before
    // the first change is taken in; on PostgreSQL the database's, shared by every server.
    let shared_register = readers.postgres().map(storage::PgStorage::db);
    let demand_ids = {
        let ix = index.clone();
        Arc::new(
            tokio::task::spawn_blocking(move || {
                let mut ix = ix.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                ix.refresh()?;
                match shared_register {
                    Some(db) => Ok(orders::DemandIds::shared(db)?),
                    None => ix.demand_owners().map(orders::DemandIds::new),
                }
            })
            .await??,
        )
    };
    tokio::spawn(index::refresh_in_background(index.clone()));
    tokio::spawn(blobs::sweep_in_background(photos.clone()));
    let app = http::router(http::AppState {
        writer,
        readers,
        access_db: Arc::new(std::sync::Mutex::new(access_db)),
        limits: Arc::new(http::auth::Limits::default()),
        response_budget: config.response_budget,
        whole_docs: config.whole_docs,
        packed_downloads: config.packed_downloads,
        index,
        workflow: Arc::new(config.workflow.clone()),
        edge: edge.clone(),
        demand_ids,
        metrics,
        imports: Default::default(),
        photos,
        photo_quota: config.photo_quota_bytes,
    });
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(http::edge::serve(listener, app, edge, async move {
        tokio::select! {
            _ = rx => {}
            _ = stop => {}
        }
    }));
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "qiaomen-server listening");
    Ok(RunningServer {
        addr,
        shutdown: Some(tx),
        task,
        writers: writer_threads,
        _lock: lock,
    })
}
