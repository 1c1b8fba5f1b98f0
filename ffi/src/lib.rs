//! `qiaomen-ffi`: the UniFFI bindings of `qiaomen-client-core` for Android (Kotlin) and iOS
//! (Swift) apps, tested from Kotlin on the JVM and from Python.
//!
//! Not built yet: this crate is the place for issue 5 (the phone library for apps). It holds
//! no code so that nobody mistakes it for a working binding; the Rust API it will wrap is
//! `qiaomen_client_core::{Store, SyncClient}`.
