//! A link between a phone and the server, of our own, on 127.0.0.1: a TCP proxy that carries
//! bytes at a set rate each way, after a set one-way delay, and can stall (carry nothing, hold
//! the connections open) or cut every open connection, on demand or at random. What a village's
//! 2G looks like to the phone library: `Link::start(server, LinkConfig::village_2g())`.
//!
//! Runs on its own thread; stops when the `Link` is dropped.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    time::Instant,
};

/// How the link behaves.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Bytes a second, each way.
    pub rate: u64,
    /// The time a byte takes from one end to the other (half the round trip).
    pub one_way_delay: Duration,
    /// Every open connection is cut at random moments this far apart on average (`None`:
    /// only [`Link::cut`] cuts).
    pub mean_time_between_cuts: Option<Duration>,
    /// Seed of the random cuts, so a run can be repeated.
    pub seed: u64,
}

impl LinkConfig {
    /// 50 kbit/s each way, 600 ms round trip, no random cuts.
    pub fn village_2g() -> Self {
        Self {
            rate: 50_000 / 8,
            one_way_delay: Duration::from_millis(300),
            mean_time_between_cuts: None,
            seed: 1,
        }
    }
}

/// What crossed the link.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub connections: AtomicU64,
    pub cuts: AtomicU64,
}

/// A running link: phones talk to [`Link::url`].
pub struct Link {
    pub url: String,
    pub stats: Arc<LinkStats>,
    rate: Arc<AtomicU64>,
    stalled: Arc<watch::Sender<bool>>,
    cut: Arc<watch::Sender<u64>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("url", &self.url).finish()
    }
}

impl Link {
    /// Starts a link to `upstream` (the server's address).
    pub fn start(upstream: SocketAddr, config: LinkConfig) -> Link {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the link");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("address");
        let stats = Arc::new(LinkStats::default());
        let stalled = Arc::new(watch::channel(false).0);
        let cut = Arc::new(watch::channel(0u64).0);
        let stop = Arc::new(AtomicBool::new(false));
        let rate = Arc::new(AtomicU64::new(config.rate.max(1)));
        let thread = {
            let (stats, stalled, cut, stop, rate) = (
                stats.clone(),
                stalled.clone(),
                cut.clone(),
                stop.clone(),
                rate.clone(),
            );
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("link runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    if let Some(mean) = config.mean_time_between_cuts {
                        tokio::spawn(random_cuts(mean, config.seed, cut.clone(), stop.clone()));
                    }
                    while !stop.load(Ordering::Relaxed) {
                        let accepted =
                            tokio::time::timeout(Duration::from_millis(100), listener.accept())
                                .await;
                        let Ok(Ok((phone, _))) = accepted else {
                            continue;
                        };
                        stats.connections.fetch_add(1, Ordering::Relaxed);
                        let (config, stats, stalled, cut, rate) = (
                            config.clone(),
                            stats.clone(),
                            stalled.clone(),
                            cut.clone(),
                            rate.clone(),
                        );
                        tokio::spawn(async move {
                            if let Ok(server) = TcpStream::connect(upstream).await {
                                carry(phone, server, config, rate, stats, stalled, cut).await;
                            }
                        });
                    }
                });
            })
        };
        Link {
            url: format!("http://{addr}"),
            stats,
            rate,
            stalled,
            cut,
            stop,
            thread: Some(thread),
        }
    }

    /// Changes the rate (bytes a second, each way), for the bytes read from now on.
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate.max(1), Ordering::Relaxed);
    }

    /// While stalled, nothing crosses the link; connections stay open.
    pub fn stall(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }

    /// Cuts every open connection now.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Cuts so far, at random or on demand (whether or not a connection was open).
    pub fn cuts(&self) -> u64 {
        *self.cut.borrow()
    }

    pub fn bytes_down(&self) -> u64 {
        self.stats.bytes_down.load(Ordering::Relaxed)
    }

    pub fn bytes_up(&self) -> u64 {
        self.stats.bytes_up.load(Ordering::Relaxed)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn random_cuts(
    mean: Duration,
    seed: u64,
    cut: Arc<watch::Sender<u64>>,
    stop: Arc<AtomicBool>,
) {
    // splitmix64 of the seed: xorshift from a small state (seed 1, 2, …) draws a tiny first
    // number, which put the first cut at the cap (20 × the mean) for every small seed.
    let mut state = {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) | 1
    };
    while !stop.load(Ordering::Relaxed) {
        // Exponentially distributed waits: cuts come as a Poisson process.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let u = ((state >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let wait = mean.mul_f64(-u.ln()).min(mean * 20);
        let until = Instant::now() + wait;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep((until - Instant::now()).min(Duration::from_millis(100))).await;
        }
        cut.send_modify(|n| *n += 1);
    }
}

/// Carries one connection both ways until either end closes or the link cuts it.
async fn carry(
    phone: TcpStream,
    server: TcpStream,
    config: LinkConfig,
    rate: Arc<AtomicU64>,
    stats: Arc<LinkStats>,
    stalled: Arc<watch::Sender<bool>>,
    cut: Arc<watch::Sender<u64>>,
) {
    let mut cut_rx = cut.subscribe();
    cut_rx.mark_unchanged();
    let (phone_r, phone_w) = phone.into_split();
    let (server_r, server_w) = server.into_split();
    let up = direction(
        phone_r,
        server_w,
        config.clone(),
        rate.clone(),
        stalled.subscribe(),
        {
            let stats = stats.clone();
            move |n| {
                stats.bytes_up.fetch_add(n, Ordering::Relaxed);
            }
        },
    );
    let down = direction(server_r, phone_w, config, rate, stalled.subscribe(), {
        let stats = stats.clone();
        move |n| {
            stats.bytes_down.fetch_add(n, Ordering::Relaxed);
        }
    });
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cut_rx.changed() => {
            stats.cuts.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Dropping both halves of both sockets closes them: a cut mid-request or mid-response.
}

/// One direction: read, wait for the rate, deliver after the delay (pipelined: bytes in flight
/// do not wait for each other's delay).
async fn direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    config: LinkConfig,
    rate: Arc<AtomicU64>,
    mut stalled: watch::Receiver<bool>,
    count: impl Fn(u64),
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 512];
        let mut free_at = Instant::now();
        loop {
            while *stalled.borrow() {
                if stalled.changed().await.is_err() {
                    return;
                }
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // The link carries `rate` bytes a second: this piece leaves when it is through.
            let now = Instant::now();
            let rate = rate.load(Ordering::Relaxed) as f64;
            free_at = free_at.max(now) + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(free_at).await;
            if tx
                .send((free_at + config.one_way_delay, buf[..n].to_vec()))
                .is_err()
            {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
            count(bytes.len() as u64);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
