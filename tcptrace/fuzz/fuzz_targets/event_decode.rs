//! Kernel records are decoded without trusting their contents.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcptrace::event::Event;

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = Event::decode(data) {
        let _ = Event::try_from(&ev.to_raw());
    }
});
