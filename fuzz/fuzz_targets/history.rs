#![no_main]
// See fuzz/README.md: a stateful target. The input drives a household's history of valid
// changes by three actors, each possibly mutated at the Automerge level; the library asserts
// that every change it would accept keeps the household loadable (a failed assertion is a
// crash). Caught Automerge panics are silenced as in the other targets.
libfuzzer_sys::fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| qiaomen_protocol::hostile::history(data)
);
