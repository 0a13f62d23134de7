//! `tcptrace report` reads histogram logs from other hosts: any bytes must merge or fail cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcptrace::report::{Merged, merge_log, render};

fuzz_target!(|data: &[u8]| {
    let mut m = Merged::default();
    if merge_log(&mut m, "fuzz", data, None, None, None).is_ok() {
        let _ = render(&m);
    }
});
