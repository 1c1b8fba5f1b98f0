#![no_main]
// See fuzz/README.md. The body is the library's own entry point, which the corpus replay test
// (protocol/tests/hostile_inputs.rs) also drives. The library catches Automerge's panics on
// hostile input (and reports an error); a silent hook lets the fuzzer go past those, while a
// panic that escapes the library still aborts and is reported as a crash.
libfuzzer_sys::fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| qiaomen_protocol::hostile::change(data)
);
