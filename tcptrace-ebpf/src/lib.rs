//! Empty library target: lets `tcptrace` build-depend on this crate so that cargo rebuilds the
//! embedded kernel object when these sources change. The programs are in `main.rs`.
#![no_std]
