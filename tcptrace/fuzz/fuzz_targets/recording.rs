//! A recording from an untrusted source must give events or a clear error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcptrace::source::record::Replay;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut r) = Replay::new(data, "fuzz") {
        while let Ok(Some(_)) = r.next_item() {}
    }
});
