//! The sync server as a child process, for tests that kill it and benchmarks that measure
//! its memory: `test_server DATA_DIR [SECONDS]`. Prints `listening <addr>` once it accepts
//! connections. Stops by itself after SECONDS (default 120). With `QIAOMEN_DATABASE` (a
//! PostgreSQL URL) it keeps everything there, as the server's `--database`.

fn main() {
    // As the server's own main: the allocator's settings, then the runtime.
    qiaomen_server::process::tune_allocator();
    qiaomen_server::process::runtime()
        .expect("runtime")
        .block_on(serve());
}

async fn serve() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let data_dir = std::env::args().nth(1).expect("data dir");
    let seconds: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let mut config = qiaomen_server::Config::new("127.0.0.1:0".parse().expect("addr"), data_dir);
    config.database = std::env::var("QIAOMEN_DATABASE").ok();
    // As `--workflow`: a JSON file of workflow settings.
    if let Ok(path) = std::env::var("QIAOMEN_WORKFLOW") {
        let text = std::fs::read_to_string(path).expect("workflow file");
        config.workflow = serde_json::from_str(&text).expect("workflow settings");
    }
    // As the server's own `--cache-docs`, for benchmarks that measure memory.
    if let Some(n) = std::env::var("QIAOMEN_CACHE_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.ingest.cache_capacity = n;
    }
    // As `--sqlite-cache-kib`.
    if let Some(kib) = std::env::var("QIAOMEN_SQLITE_CACHE_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        qiaomen_server::storage::set_page_cache_kib(kib);
    }
    let server = qiaomen_server::start(
        config,
        tokio::time::sleep(std::time::Duration::from_secs(seconds)),
    )
    .await
    .unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    println!("listening {}", server.addr);
    server.wait().await.expect("serve");
}
