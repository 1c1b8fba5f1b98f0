#![no_main]
// See fuzz/README.md. The body is the library's own entry point, which the corpus replay test
// (protocol/tests/hostile_inputs.rs) also drives.
libfuzzer_sys::fuzz_target!(|data: &[u8]| qiaomen_protocol::hostile::document(data));
