//! `cargo xtask`: the project's tasks, the same on a laptop and in CI (`.ci/run`).
//!
//! Why a program and not a README section: the eBPF side of tcptrace does not build with plain
//! cargo. `tcptrace/build.rs` (through aya-build) compiles `tcptrace-ebpf` with the `nightly`
//! toolchain, which needs the `rust-src` component and a `bpf-linker` on PATH, and bpf-linker 0.13
//! must be built from crates.io against the nightly toolchain's own libLLVM (its release tarballs
//! cannot be downloaded here). `setup` does that, idempotently: it costs well under a second when
//! everything is in place and rebuilds bpf-linker only when the nightly's libLLVM file name no
//! longer matches the one the installed binary links against.
//!
//! Commands (`cargo xtask help` for the full text):
//! - `setup`: install rust-src for nightly and bpf-linker, if missing or stale.
//! - `build [--debug]`: setup, then `cargo build --release -p tcptrace`.
//! - `run [-- ARGS]`: setup, release build, then run the tracer as root (through `sudo -E`
//!   when not root) with ARGS, or [`DEFAULT_RUN_ARGS`]; forwards the tracer's exit code.
//! - `test [-- ARGS]`: setup, unit tests, lints (eBPF crate on nightly, host crates on stable),
//!   release build, then the privileged integration tests (ARGS go to the test binaries).
//!
//! Where things are: cargo is `$CARGO` (the cargo running this xtask, so the same toolchain)
//! else `cargo`; nightly commands go through `rustup run nightly`, because `$CARGO` is a
//! toolchain's own binary, which does not understand `+nightly`. The workspace root is the parent
//! of this crate's directory (`CARGO_MANIFEST_DIR` at compile time), so any working directory
//! works. bpf-linker goes to `$CARGO_HOME/bin` (default `~/.cargo/bin`), which is also put in
//! front of PATH for the commands run here, so aya-build finds it.

use std::{
    env,
    ffi::{OsStr, OsString},
    fs,
    os::unix::{fs::symlink, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus},
};

use anyhow::{Context, Result, anyhow, bail};

mod bench;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// What `cargo xtask run` passes to tcptrace when given no arguments.
pub const DEFAULT_RUN_ARGS: &[&str] = &["watch"];

/// The bpf-linker release built by `setup` (the newest that builds with this project's rustc).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The toolchain aya-build uses for the eBPF crate (its default: the machine's `nightly`).
const NIGHTLY: &str = "nightly";

/// Test threads for the integration tests: each one runs a tracer, two at a time is enough.
const INTEGRATION_TEST_THREADS: &str = "--test-threads=2";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "tcptrace's project tasks: setup, build, run, test"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the eBPF build needs and lacks: rust-src for nightly, bpf-linker
    Setup,
    /// Set up, then build tcptrace (release unless --debug)
    Build {
        /// Build the debug profile instead of release
        #[arg(long)]
        debug: bool,
    },
    /// Set up, build release, and run target/release/tcptrace as root (via `sudo -E` if needed)
    Run {
        /// Arguments for tcptrace
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Set up, build, then the benchmarks: aggregator throughput on a replayed stream, and the
    /// tracer's overhead on a connection churn against no tracer (and bpftrace where installed)
    Bench {
        /// Interleaved rounds of every configuration
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds of load per configuration and round
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Load threads (each connects, accepts and closes in lockstep)
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Also measure at this fixed connection rate (0: skip)
        #[arg(long, default_value_t = 10_000)]
        fixed_rate: u64,
        /// Only the aggregator benchmark
        #[arg(long)]
        aggregator_only: bool,
        /// Overhead runs of only these configurations (and the no-tracer baseline; the
        /// aggregator benchmark is skipped): none, watch, watch-sockops, watch-stream, events-json,
        /// bpftrace, and with --compare watch-compare, events-json-compare
        #[arg(long, value_name = "CONFIG", value_delimiter = ',')]
        only: Vec<String>,
        /// Also report each BPF program's runs per connection and ns per run, from extra rounds
        /// with kernel.bpf_stats_enabled on (it slows every program run, so the throughput
        /// rounds always run with it off)
        #[arg(long)]
        bpf_stats: bool,
        /// Another tcptrace binary (e.g. built from the previous commit) whose `watch` and
        /// `events --json` run in the same rounds ("watch-compare", "events-json-compare" for
        /// --only)
        #[arg(long, value_name = "PATH")]
        compare: Option<PathBuf>,
        /// Instead of the overhead runs: the soak, `tcptrace watch` under a steady churn at
        /// --fixed-rate for this many minutes, its memory sampled every 10 s
        #[arg(long, value_name = "MINUTES")]
        soak: Option<u64>,
    },
    /// Fuzz the parsers of untrusted input (recordings, histogram logs, tracefs format files,
    /// kernel records) with cargo-fuzz, each for a bounded time, from the kept regression corpus
    Fuzz {
        /// Seconds per target
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Set up, build the release binary (BPF object embedded), strip it and pack it with the
    /// service definitions into target/dist/
    Dist,
    /// Set up, then unit tests, lints, release build and the privileged integration tests
    Test {
        /// Extra arguments for the integration test binaries (e.g. a test name filter)
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let run_help = format!(
        "With no ARGS, runs `tcptrace {}`. Example: cargo xtask run -- events --help",
        DEFAULT_RUN_ARGS.join(" ")
    );
    let matches = Cli::command()
        .mut_subcommand("run", |c| c.after_help(run_help))
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Cmd) -> Result<ExitCode> {
    let ctx = Ctx::new()?;
    match command {
        Cmd::Setup => ctx.setup()?,
        Cmd::Build { debug } => {
            ctx.setup()?;
            ctx.build(!debug)?;
        }
        Cmd::Run { args } => {
            ctx.setup()?;
            ctx.build(true)?;
            return ctx.run_tracer(&run_args(&args));
        }
        Cmd::Test { args } => ctx.test(&args)?,
        Cmd::Fuzz { seconds } => {
            ctx.setup()?;
            ctx.fuzz(seconds)?;
        }
        Cmd::Dist => {
            ctx.setup()?;
            ctx.build(true)?;
            ctx.dist()?;
        }
        Cmd::Bench {
            rounds,
            seconds,
            threads,
            fixed_rate,
            aggregator_only,
            only,
            bpf_stats,
            compare,
            soak,
        } => {
            ctx.setup()?;
            if let Some(minutes) = soak {
                if !is_root() {
                    bail!(
                        "the soak loads the tracer and makes a network namespace: run it as root"
                    );
                }
                ctx.build(true)?;
                println!(
                    "{}",
                    bench::soak(&ctx.tracer_bin(true), minutes, fixed_rate.max(1))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            if only.is_empty() {
                step(
                    "aggregator benchmark",
                    &mut ctx.cargo("bench -p tcptrace --bench aggregate"),
                )?;
            }
            if !aggregator_only {
                if !is_root() {
                    bail!(
                        "the overhead benchmark loads the tracer and makes a network namespace: run it as root"
                    );
                }
                ctx.build(true)?;
                let table = bench::overhead(&bench::BenchOptions {
                    rounds,
                    seconds,
                    threads,
                    fixed_rate,
                    tracer: ctx.tracer_bin(true),
                    only,
                    bpf_stats,
                    compare,
                })?;
                println!("{table}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The arguments `run` gives tcptrace: the user's, or [`DEFAULT_RUN_ARGS`].
fn run_args(user: &[String]) -> Vec<String> {
    if user.is_empty() {
        DEFAULT_RUN_ARGS.iter().map(|s| s.to_string()).collect()
    } else {
        user.to_vec()
    }
}

struct Ctx {
    root: PathBuf,
    cargo: OsString,
    cargo_home: PathBuf,
    target_dir: PathBuf,
    /// PATH for child commands: `$CARGO_HOME/bin` first, so they find bpf-linker.
    path: OsString,
}

impl Ctx {
    fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask's directory has no parent")?
            .to_path_buf();
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let cargo_home = match env::var_os("CARGO_HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h),
            _ => Path::new(&env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?)
                .join(".cargo"),
        };
        // cargo resolves a relative CARGO_TARGET_DIR against its working directory: the root.
        let target_dir = match env::var_os("CARGO_TARGET_DIR") {
            Some(d) if !d.is_empty() => root.join(d),
            _ => root.join("target"),
        };
        let path = prepend_path(&cargo_home.join("bin"), env::var_os("PATH"))?;
        Ok(Self {
            root,
            cargo,
            cargo_home,
            target_dir,
            path,
        })
    }

    /// `cargo ARGS` in the workspace root, with the toolchain that runs xtask. ARGS is split on
    /// whitespace.
    fn cargo(&self, args: &str) -> Command {
        let mut cmd = Command::new(&self.cargo);
        cmd.args(args.split_whitespace())
            .current_dir(&self.root)
            .env("PATH", &self.path);
        cmd
    }

    /// `rustup run nightly COMMAND` in the workspace root. COMMAND is split on whitespace.
    fn nightly(&self, command: &str) -> Command {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", NIGHTLY])
            .args(command.split_whitespace())
            .current_dir(&self.root)
            .env("PATH", &self.path);
        cmd
    }

    fn tracer_bin(&self, release: bool) -> PathBuf {
        self.target_dir
            .join(if release { "release" } else { "debug" })
            .join("tcptrace")
    }

    fn setup(&self) -> Result<()> {
        self.ensure_rust_src()?;
        self.ensure_bpf_linker()
    }

    fn ensure_rust_src(&self) -> Result<()> {
        let installed = output(Command::new("rustup").args([
            "component",
            "list",
            "--toolchain",
            NIGHTLY,
            "--installed",
        ]))
        .context(
            "cannot list the nightly toolchain's components; tcptrace's eBPF build needs rustup \
             and the `nightly` toolchain (install it with `rustup toolchain install nightly`)",
        )?;
        if !has_component(&installed, "rust-src") {
            eprintln!("xtask: installing rust-src for {NIGHTLY}");
            let mut cmd = Command::new("rustup");
            cmd.args(["component", "add", "rust-src", "--toolchain", NIGHTLY]);
            step("installing rust-src", &mut cmd)?;
        }
        Ok(())
    }

    /// Build bpf-linker unless `$CARGO_HOME/bin/bpf-linker` already links against, and finds,
    /// the libLLVM file the nightly toolchain ships now.
    fn ensure_bpf_linker(&self) -> Result<()> {
        let sysroot = output(&mut self.nightly("rustc --print sysroot"))
            .context("cannot find the nightly toolchain's sysroot")?;
        let llvm_dir = Path::new(sysroot.trim()).join("lib");
        let names = fs::read_dir(&llvm_dir)
            .with_context(|| format!("cannot list {}", llvm_dir.display()))?
            .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
            .collect::<Vec<_>>();
        let llvm = find_libllvm(&names).with_context(|| {
            format!(
                "in {}: bpf-linker must link against the nightly's libLLVM",
                llvm_dir.display()
            )
        })?;
        let major = llvm_major(&llvm)?;

        let bin = self.cargo_home.join("bin").join("bpf-linker");
        let why = if bin.exists() {
            match linker_state_of(&bin, &llvm)? {
                LinkerState::Current => return Ok(()),
                old => format!("; the installed one {old}"),
            }
        } else {
            String::new()
        };

        eprintln!(
            "xtask: installing bpf-linker {BPF_LINKER_VERSION} against {llvm} (a few minutes{why})"
        );
        // LLVM_PREFIX/lib must hold `libLLVM.so` (what the build links against) and the file's
        // own name (what the binary's RUNPATH, LLVM_PREFIX/lib, resolves at run time).
        let prefix = self.cargo_home.join(format!("llvm-{major}"));
        let lib = prefix.join("lib");
        fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
        for name in ["libLLVM.so", llvm.as_str()] {
            let link = lib.join(name);
            if link.symlink_metadata().is_ok() {
                fs::remove_file(&link)
                    .with_context(|| format!("cannot replace {}", link.display()))?;
            }
            symlink(llvm_dir.join(&llvm), &link)
                .with_context(|| format!("cannot create the symlink {}", link.display()))?;
        }
        let mut install = self.cargo(&format!(
            "install --locked --force bpf-linker@{BPF_LINKER_VERSION} \
             --no-default-features --features llvm-{major}"
        ));
        install
            .arg("--root")
            .arg(&self.cargo_home)
            .env("LLVM_PREFIX", &prefix);
        step("installing bpf-linker", &mut install).map_err(|e| {
            anyhow!(
                "{e}; if cargo says bpf-linker {BPF_LINKER_VERSION} has no `llvm-{major}` \
                 feature, the nightly moved to a newer LLVM: raise BPF_LINKER_VERSION in \
                 xtask/src/main.rs"
            )
        })?;
        match linker_state_of(&bin, &llvm)? {
            LinkerState::Current => Ok(()),
            other => bail!("the bpf-linker just installed at {} {other}", bin.display()),
        }
    }

    fn build(&self, release: bool) -> Result<()> {
        let profile = if release { "--release " } else { "" };
        step(
            "build",
            &mut self.cargo(&format!("build {profile}-p tcptrace")),
        )?;
        eprintln!("xtask: built {}", self.tracer_bin(release).display());
        Ok(())
    }

    fn run_tracer(&self, args: &[String]) -> Result<ExitCode> {
        let bin = self.tracer_bin(true);
        let mut cmd = if is_root() {
            Command::new(&bin)
        } else {
            let Some(sudo) = find_in_path("sudo", env::var_os("PATH")) else {
                bail!("tcptrace needs root (or CAP_BPF+CAP_PERFMON); run as root or install sudo");
            };
            let mut cmd = Command::new(sudo);
            cmd.arg("-E").arg(&bin);
            cmd
        };
        cmd.args(args);
        eprintln!("xtask: $ {}", show(&cmd));
        // Ctrl-C reaches the tracer from the terminal; xtask only waits for it to finish and
        // report. A handler (unlike SIG_IGN) is reset by exec, so the child keeps the default.
        outlive_sigint();
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        Ok(ExitCode::from(exit_code(status)))
    }

    fn test(&self, extra: &[String]) -> Result<()> {
        self.setup()?;
        let steps = [
            (
                "unit tests",
                self.cargo("test --release -p tcptrace -p tcptrace-common -p xtask"),
            ),
            (
                "eBPF lint",
                self.nightly(
                    "cargo clippy -p tcptrace-ebpf --target bpfel-unknown-none \
                     -Z build-std=core --release -- -D warnings",
                ),
            ),
            (
                "clippy",
                self.cargo(
                    "clippy --release -p tcptrace -p tcptrace-common -p tcptrace-tests \
                     -p xtask --all-targets -- -D warnings",
                ),
            ),
            ("release build", self.cargo("build --release -p tcptrace")),
        ];
        for (name, mut cmd) in steps {
            step(name, &mut cmd)?;
        }

        // `--tests`: no doc-tests, so the run ends on the last integration test's result line.
        let mut cmd = self.cargo("test --release -p tcptrace-tests --tests");
        if !is_root() {
            if find_in_path("sudo", env::var_os("PATH")).is_none() {
                bail!(
                    "integration tests failed to start: they need root (they load the tracer); \
                     run as root or install sudo"
                );
            }
            // Cargo still builds as this user; only the test binaries run under sudo.
            cmd.args(["--config", r#"target.'cfg(all())'.runner=["sudo","-E"]"#]);
        }
        cmd.args(["--", INTEGRATION_TEST_THREADS])
            .args(extra)
            .env("TCPTRACE_BIN", self.tracer_bin(true));
        step("integration tests", &mut cmd)
    }
}

/// The fuzz targets in tcptrace/fuzz/fuzz_targets/.
const FUZZ_TARGETS: [&str; 4] = ["recording", "tracefs_format", "hdr_log", "event_decode"];

impl Ctx {
    /// Each target runs for `seconds` from its regression corpus (tcptrace/fuzz/corpus/T, read
    /// only) plus a scratch corpus under target/; a crash fails the task and leaves its input in
    /// tcptrace/fuzz/artifacts/T/ (add it to the corpus once fixed).
    fn fuzz(&self, seconds: u64) -> Result<()> {
        let have = Command::new("rustup")
            .args(["run", NIGHTLY, "cargo", "fuzz", "--version"])
            .env("PATH", &self.path)
            .output()
            .is_ok_and(|o| o.status.success());
        if !have {
            eprintln!("xtask: installing cargo-fuzz (a minute or two)");
            step(
                "install cargo-fuzz",
                &mut self.cargo("install --locked cargo-fuzz"),
            )?;
        }
        let crate_dir = self.root.join("tcptrace");
        for t in FUZZ_TARGETS {
            let work = self.target_dir.join("fuzz-corpus").join(t);
            fs::create_dir_all(&work)?;
            let mut cmd = self.nightly(&format!("cargo fuzz run --release {t}"));
            cmd.current_dir(&crate_dir)
                .arg(&work)
                .arg(crate_dir.join("fuzz/corpus").join(t))
                .arg("--")
                .arg(format!("-max_total_time={seconds}"));
            step(&format!("fuzzing {t}"), &mut cmd)?;
        }
        Ok(())
    }

    /// target/dist/tcptrace-VERSION-ARCH-linux/{tcptrace, tcptrace.service, daemonset.yaml,
    /// README.md} and its .tar.gz: one self-contained binary (the BPF object is embedded),
    /// needing only glibc and a kernel with BTF.
    fn dist(&self) -> Result<()> {
        let version = output(Command::new(self.tracer_bin(true)).arg("--version"))?;
        let version = version.split_whitespace().nth(1).unwrap_or("0").to_string();
        let name = format!("tcptrace-{version}-{}-linux", env::consts::ARCH);
        let dist = self.target_dir.join("dist");
        let dir = dist.join(&name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let bin = dir.join("tcptrace");
        fs::copy(self.tracer_bin(true), &bin).context("copying the binary")?;
        step(
            "strip",
            Command::new("strip").arg("--strip-debug").arg(&bin),
        )?;
        for f in [
            "tcptrace/deploy/tcptrace.service",
            "tcptrace/deploy/daemonset.yaml",
            "README.md",
        ] {
            let src = self.root.join(f);
            let dst = dir.join(Path::new(f).file_name().unwrap_or_default());
            fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
        let tarball = dist.join(format!("{name}.tar.gz"));
        step(
            "tar",
            Command::new("tar")
                .arg("-C")
                .arg(&dist)
                .arg("-czf")
                .arg(&tarball)
                .arg(&name),
        )?;
        let size = fs::metadata(&bin)?.len();
        let libs = output(Command::new("ldd").arg(&bin)).unwrap_or_default();
        eprintln!(
            "xtask: {} ({:.1} MiB), {}\nxtask: it links only: {}",
            bin.display(),
            size as f64 / (1 << 20) as f64,
            tarball.display(),
            libs.lines()
                .filter_map(|l| l.split_whitespace().next())
                .collect::<Vec<_>>()
                .join(" ")
        );
        Ok(())
    }
}

/// Run a command to completion; a failure names the step in one line.
fn step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("{name} failed: cannot run {}", show(cmd)))?;
    if !status.success() {
        bail!("{name} failed: `{}` ended with {status}", show(cmd));
    }
    Ok(())
}

/// A command's stdout; its stderr goes to ours only when it fails.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` exited with {}: {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{} printed non-UTF-8", show(cmd)))
}

/// A command as a user would type it (`$CARGO`'s full path shortened to `cargo`).
fn show(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let program = match program.file_name() {
        Some(name) if name == "cargo" => name,
        _ => program.as_os_str(),
    };
    std::iter::once(program)
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// How the bpf-linker at `bin` relates to the libLLVM file `llvm`, according to ldd.
fn linker_state_of(bin: &Path, llvm: &str) -> Result<LinkerState> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd (Debian package libc-bin) to check bpf-linker")?;
    if !out.status.success() {
        return Ok(LinkerState::NoLlvm); // e.g. "not a dynamic executable"
    }
    Ok(linker_state(&String::from_utf8_lossy(&out.stdout), llvm))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Let Ctrl-C end the child but not xtask, which then reports the child's status.
fn outlive_sigint() {
    extern "C" fn on_sigint(_: libc::c_int) {}
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler does nothing, so it is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
}

/// A child's exit status as our exit code: its own code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

fn find_in_path(name: &str, path: Option<OsString>) -> Option<PathBuf> {
    env::split_paths(&path?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// PATH with `dir` first (unless already in it).
fn prepend_path(dir: &Path, path: Option<OsString>) -> Result<OsString> {
    let mut dirs = path
        .as_deref()
        .map(env::split_paths)
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    if !dirs.iter().any(|d| d == dir) {
        dirs.insert(0, dir.to_path_buf());
    }
    env::join_paths(dirs).context("PATH has an entry containing ':'")
}

/// Whether `rustup component list --installed` output lists `component`, bare (`rust-src`) or
/// with its target (`rust-std-x86_64-unknown-linux-gnu`).
fn has_component(list: &str, component: &str) -> bool {
    let with_target = format!("{component}-");
    list.lines()
        .map(str::trim)
        .any(|line| line == component || line.starts_with(&with_target))
}

/// The one `libLLVM.so.*` file among a sysroot lib directory's file names.
fn find_libllvm(names: &[String]) -> Result<String> {
    let mut found = names
        .iter()
        .filter(|n| n.starts_with("libLLVM.so."))
        .collect::<Vec<_>>();
    found.sort();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no libLLVM.so.* file"),
        many => bail!(
            "several libLLVM.so.* files ({}); cannot tell which one rustc uses",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// LLVM's major version from a file name like `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn llvm_major(file: &str) -> Result<u32> {
    file.strip_prefix("libLLVM.so.")
        .and_then(|v| v.split(['.', '-']).next())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read LLVM's major version from {file:?}"))
}

#[derive(Debug, PartialEq)]
enum LinkerState {
    Current,
    /// It links against another libLLVM file (the nightly changed since it was built).
    Stale(String),
    /// It links against the right file name, but the dynamic loader does not find it.
    Unresolved,
    /// ldd shows no libLLVM at all (not a bpf-linker built here).
    NoLlvm,
}

impl std::fmt::Display for LinkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Current => f.write_str("is current"),
            Self::Stale(old) => write!(f, "links against {old}"),
            Self::Unresolved => f.write_str("cannot find its libLLVM"),
            Self::NoLlvm => f.write_str("does not link against a libLLVM"),
        }
    }
}

/// Judge a bpf-linker from its `ldd` output, e.g.
/// `libLLVM.so.22.1-rust-1.97.0-nightly => /root/.cargo/llvm-22/lib/libLLVM.so.22.1-… (0x…)`.
fn linker_state(ldd: &str, want: &str) -> LinkerState {
    let Some((name, resolved)) = ldd
        .lines()
        .filter_map(|l| l.trim().split_once(" => "))
        .find(|(name, _)| name.starts_with("libLLVM"))
    else {
        return LinkerState::NoLlvm;
    };
    if name != want {
        LinkerState::Stale(name.to_string())
    } else if resolved.trim_start().starts_with("not found") {
        LinkerState::Unresolved
    } else {
        LinkerState::Current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLVM: &str = "libLLVM.so.22.1-rust-1.97.0-nightly";

    #[test]
    fn run_args_default_only_when_none_given() {
        assert_eq!(run_args(&[]), DEFAULT_RUN_ARGS);
        let user = vec!["events".to_string(), "--json".to_string()];
        assert_eq!(run_args(&user), user);
    }

    #[test]
    fn finds_the_one_libllvm() {
        let names = [
            "libLLVM-22-rust-1.97.0-nightly.so",
            LLVM,
            "librustc_driver-b5a9.so",
            "rustlib",
        ]
        .map(String::from);
        assert_eq!(find_libllvm(&names).unwrap(), LLVM);
        assert!(find_libllvm(&names[2..]).is_err());
        let two = [LLVM, "libLLVM.so.23.0-rust-1.99.0-nightly"].map(String::from);
        assert!(
            find_libllvm(&two)
                .unwrap_err()
                .to_string()
                .contains("several")
        );
    }

    #[test]
    fn reads_llvm_major() {
        assert_eq!(llvm_major(LLVM).unwrap(), 22);
        assert_eq!(llvm_major("libLLVM.so.23-rust-1.99.0-nightly").unwrap(), 23);
        assert!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so").is_err());
    }

    #[test]
    fn judges_bpf_linker_from_ldd() {
        let ok = format!(
            "\tlinux-vdso.so.1 (0x00007f3f1946e000)\n\
             \t{LLVM} => /root/.cargo/llvm-22/lib/{LLVM} (0x00007f3f0ea00000)\n\
             \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3f0e81e000)\n"
        );
        assert_eq!(linker_state(&ok, LLVM), LinkerState::Current);
        assert_eq!(
            linker_state(&ok, "libLLVM.so.22.1-rust-1.98.0-nightly"),
            LinkerState::Stale(LLVM.into())
        );
        let missing = format!("\t{LLVM} => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n");
        assert_eq!(linker_state(&missing, LLVM), LinkerState::Unresolved);
        assert_eq!(
            linker_state("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n", LLVM),
            LinkerState::NoLlvm
        );
    }

    #[test]
    fn rust_src_component() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(!has_component(
            "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
        assert!(has_component(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust-std"
        ));
    }

    #[test]
    fn path_gets_cargo_bin_once() {
        let bin = Path::new("/h/.cargo/bin");
        assert_eq!(
            prepend_path(bin, Some("/usr/bin:/bin".into())).unwrap(),
            "/h/.cargo/bin:/usr/bin:/bin"
        );
        assert_eq!(
            prepend_path(bin, Some("/usr/bin:/h/.cargo/bin".into())).unwrap(),
            "/usr/bin:/h/.cargo/bin"
        );
        assert_eq!(prepend_path(bin, None).unwrap(), "/h/.cargo/bin");
    }

    #[test]
    fn exit_codes_forwarded() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGINT)), 130);
    }
}
