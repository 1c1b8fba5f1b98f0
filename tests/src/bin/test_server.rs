//! The sync server as a child process, for tests that kill it: `test_server DATA_DIR`.
//! Prints `listening <addr>` once it accepts connections. Stops by itself after 120 s.

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let data_dir = std::env::args().nth(1).expect("data dir");
    let config = qiaomen_server::Config::new("127.0.0.1:0".parse().expect("addr"), data_dir);
    let server = qiaomen_server::start(
        config,
        tokio::time::sleep(std::time::Duration::from_secs(120)),
    )
    .await
    .expect("start");
    println!("listening {}", server.addr);
    server.wait().await.expect("serve");
}
