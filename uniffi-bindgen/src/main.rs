//! `uniffi-bindgen generate --library target/debug/libqiaomen.so --language kotlin --out-dir out`
fn main() {
    uniffi::uniffi_bindgen_main()
}
