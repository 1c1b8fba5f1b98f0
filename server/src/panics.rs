//! Panics on client bytes: Automerge has open issues where hostile input panics, and the
//! server catches those panics (`catch_unwind` in `qiaomen_protocol::doc` and in the writer
//! threads) and refuses the change. What such a panic leaves in the log is one line, with the
//! household it happened on (when the code that loaded it said which, [`household`]) and where
//! it happened — never the default hook's message and backtrace, which may quote the bytes.
//!
//! Panics elsewhere (bugs of this server, failed test assertions) go to the hook installed
//! before, unchanged.

use std::cell::Cell;

use qiaomen_protocol::ids::HouseholdId;

thread_local! {
    static HOUSEHOLD: Cell<Option<HouseholdId>> = const { Cell::new(None) };
}

/// While alive, panics on this thread are reported as being about `id`.
#[derive(Debug)]
#[must_use = "the household is named only while the scope lives"]
pub struct HouseholdScope(Option<HouseholdId>);

/// Names the household this thread is working on, until the scope is dropped.
pub fn household(id: HouseholdId) -> HouseholdScope {
    HouseholdScope(HOUSEHOLD.with(|h| h.replace(Some(id))))
}

impl Drop for HouseholdScope {
    fn drop(&mut self) {
        HOUSEHOLD.with(|h| h.set(self.0));
    }
}

/// Whether a panic at `file` is inside the document libraries (whose messages may quote
/// client data).
fn in_document_code(file: &str) -> bool {
    ["automerge-", "autosurgeon-", "automerge/", "autosurgeon/"]
        .iter()
        .any(|crate_dir| file.contains(crate_dir))
}

/// Installs the hook (once per process; later calls do nothing).
pub fn install_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let household = HOUSEHOLD.with(Cell::get);
            let file = info.location().map_or("", |l| l.file());
            let line = info.location().map_or(0, |l| l.line());
            if in_document_code(file) {
                tracing::error!(
                    household = household.map(|h| h.to_string()),
                    at = %format_args!("{file}:{line}"),
                    "Automerge panicked on client data (caught; its changes are refused)"
                );
            } else if let Some(household) = household {
                // This server's own code, on a household: its message is ours, one line.
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let message: String = message
                    .chars()
                    .take(200)
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                tracing::error!(
                    household = %household,
                    at = %format_args!("{file}:{line}"),
                    message,
                    "panicked while handling a household (caught)"
                );
            } else {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_caught_panic_on_a_household_is_one_log_line_naming_it() {
        install_hook();
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let id = HouseholdId::new();
        tracing::subscriber::with_default(subscriber, || {
            let _scope = household(id);
            let caught = std::panic::catch_unwind(|| panic!("an invariant\nbroke"));
            assert!(caught.is_err());
        });
        let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains(&id.to_string()) && log.contains("an invariant broke"));
        assert!(!log.contains("stack backtrace"));
        assert_eq!(HOUSEHOLD.with(Cell::get), None, "the scope ended");
        assert!(in_document_code(
            "/root/.cargo/registry/src/index.crates.io-1/automerge-0.12.0/src/op_set.rs"
        ));
        assert!(!in_document_code("server/src/ingest.rs"));
    }
}
