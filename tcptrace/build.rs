//! Builds the kernel programs (tcptrace-ebpf) for bpfel-unknown-none with the nightly toolchain
//! and bpf-linker, leaving the object in OUT_DIR for `include_bytes_aligned!`.
//! `cargo xtask` installs what this needs (rust-src, bpf-linker); see the README.
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = format!("{manifest_dir}/../tcptrace-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tcptrace-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
