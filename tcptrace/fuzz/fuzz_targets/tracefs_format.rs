//! A tracefs `format` file (a kernel we have never seen) must parse or fail cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcptrace::source::kernel::tracefs::TracepointFormat;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(f) = TracepointFormat::parse("tcp", "fuzz", text)
    {
        for field in ["skaddr", "state", "sport", "saddr_v6", "err"] {
            let _ = f.require(field, &[2, 4, 8, 16]);
            let _ = f.optional(field, &[4]);
        }
    }
});
