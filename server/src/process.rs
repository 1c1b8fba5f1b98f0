//! How the server process is set up before it serves: the memory allocator's settings and
//! the async runtime. `main.rs` (and the test server) call [`tune_allocator`] first thing,
//! then run on [`runtime`].

/// The glibc allocator settings the server runs with (measured in BENCHMARKS.md, "hostile
/// devices"): at most two heaps ("arenas"), and blocks of 128 KiB and more mapped and unmapped
/// on their own instead of kept in a heap. glibc's defaults keep a heap for each of up to
/// 8 × cores threads that once contended and raise the mapping threshold to the largest block
/// freed (up to 32 MiB), so after a burst of large requests each heap keeps what it freed: 30 s
/// after 30,000 mutated requests the server held 65-72 MB with the defaults, 45 MB with these.
pub const GLIBC_TUNABLES: &str = "glibc.malloc.arena_max=2:\
glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072";

/// Starts the process again with [`GLIBC_TUNABLES`] set, unless the environment already sets
/// `GLIBC_TUNABLES` (the operator's choice stands) or `QIAOMEN_KEEP_ALLOCATOR` is set. glibc
/// reads its tunables only when a process starts, and setting them from inside (`mallopt`)
/// would take `unsafe` code, which this workspace forbids. Call it before any thread is
/// started; it returns only if it does not restart (not glibc, or the restart failed).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("GLIBC_TUNABLES").is_some()
            || std::env::var_os("QIAOMEN_KEEP_ALLOCATOR").is_some()
        {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        // `exec` replaces this process (same pid, same open files); it returns only on error.
        let e = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", GLIBC_TUNABLES)
            .exec();
        eprintln!("note: the allocator keeps its defaults (restarting failed: {e})");
    }
}

/// The async runtime the server runs on: worker threads as many as cores, and at most
/// [`BLOCKING_THREADS`] threads for blocking work (SQLite, decoding, Automerge). Tasks beyond
/// that wait in the runtime's queue instead of each starting a thread of its own.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("qiaomen")
        .build()
}

/// Threads for blocking work. Every such task is short (one query, one decode) or bounded
/// by its own semaphore; waiting for a writer's queue holds no thread.
pub const BLOCKING_THREADS: usize = 32;
