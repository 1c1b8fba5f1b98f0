//! The sync server as a child process, for tests that kill it and benchmarks that measure
//! its memory: `test_server DATA_DIR [SECONDS]`. Prints `listening <addr>` once it accepts
//! connections. Stops by itself after SECONDS (default 120).

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
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
    let config = qiaomen_server::Config::new("127.0.0.1:0".parse().expect("addr"), data_dir);
    let server = qiaomen_server::start(
        config,
        tokio::time::sleep(std::time::Duration::from_secs(seconds)),
    )
    .await
    .expect("start");
    println!("listening {}", server.addr);
    server.wait().await.expect("serve");
}
