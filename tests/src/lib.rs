//! End-to-end tests of Qiaomen live in `tests/`; this library holds what they share.

use autosurgeon::Text;
use qiaomen_protocol::{calendar::Day, doc::Author, ids::*, schema::*};

/// A plausible visit by `author` for `visit_day`.
pub fn sample_visit(author: &Author, visit_day: Day, note: &str) -> Visit {
    Visit {
        id: VisitId::new(),
        visit_day,
        worker: author.user,
        device: author.device,
        started_at_ms: 1_763_000_000_000,
        ended_at_ms: Some(1_763_000_900_000),
        gps: Some(Gps {
            lat: 34.7466,
            lon: 113.6253,
            accuracy_m: Some(6.0),
        }),
        outcome: VisitOutcome::Met,
        people_met: vec![],
        needs: vec![Need {
            category: NeedCategory::ElderlyCare,
            detail: "需要助餐服务".into(),
        }],
        disputes: vec![],
        hazards: vec![],
        publicity: vec![Publicity::AntiFraud, Publicity::FireSafety],
        note: Text::with_value(note),
        demands_raised: vec![],
    }
}

use std::path::Path;

use qiaomen_client_core::{Store, StoreOptions, SyncClient, SyncError, SyncReport};

/// A server in this process on 127.0.0.1:0, with its own runtime, stopped on drop.
#[allow(missing_debug_implementations)]
pub struct TestServer {
    pub url: String,
    pub addr: std::net::SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    server: Option<qiaomen_server::RunningServer>,
}

impl TestServer {
    pub fn start(data_dir: &Path) -> TestServer {
        Self::start_on(data_dir, "127.0.0.1:0".parse().expect("addr"))
    }

    pub fn start_on(data_dir: &Path, listen: std::net::SocketAddr) -> TestServer {
        Self::start_with_budget(
            data_dir,
            listen,
            qiaomen_protocol::wire::limits::RESPONSE_BUDGET_BYTES,
        )
    }

    /// A server whose responses carry about `response_budget` bytes of changes each.
    pub fn start_with_budget(
        data_dir: &Path,
        listen: std::net::SocketAddr,
        response_budget: usize,
    ) -> TestServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let mut config = qiaomen_server::Config::new(listen, data_dir);
        config.response_budget = response_budget;
        let server = runtime
            .block_on(qiaomen_server::start(config, std::future::pending()))
            .expect("server starts");
        let addr = server.addr;
        TestServer {
            url: format!("http://{addr}"),
            addr,
            runtime: Some(runtime),
            server: Some(server),
        }
    }

    /// Graceful stop: in-flight syncs finish.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let (Some(rt), Some(server)) = (self.runtime.as_ref(), self.server.take()) {
            rt.block_on(server.shutdown()).expect("clean shutdown");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// A simulated phone: a device store on a temp SQLite file and a sync client.
#[derive(Debug)]
pub struct Phone {
    pub store: Store,
    pub client: SyncClient,
    pub author: Author,
}

impl Phone {
    pub fn new(path: &Path, url: &str, grids: &[&str]) -> Phone {
        let author = Author {
            user: UserId::new(),
            device: DeviceId::new(),
        };
        let store = Store::open(path, author, StoreOptions::default()).expect("store");
        let client = SyncClient::new(url)
            .expect("client")
            .with_grids(grids.iter().copied());
        Phone {
            store,
            client,
            author,
        }
    }

    /// Runs one sync to completion on a private single-threaded runtime.
    pub fn sync(&mut self) -> Result<SyncReport, SyncError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(self.client.sync(&mut self.store, |_| {}))
    }
}
