//! The live source: loads tcptrace's kernel programs, attaches them to the TCP tracepoints and
//! reads their ring buffer.
//!
//! Start-up checks come first and fail with one line that names the fix (privileges, tracefs,
//! BTF, a missing tracepoint, no ring buffer support). The reader is async and never busy-polls:
//! it sleeps until the kernel forces a wake-up (enough bytes waiting) or its drain timer fires,
//! then drains everything in one batch.
pub mod btf;
mod offsets;
pub mod tracefs;

use std::{os::fd::AsRawFd as _, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapType, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use tcptrace_common::{Config, counter};
use tokio::io::{Interest, unix::AsyncFd};

pub use offsets::TRACEPOINTS;

use crate::event::{DecodeError, Event};

/// How often the reader drains the ring buffer when the kernel has not woken it.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(25);

#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Emit aya-log debug lines from the kernel programs.
    pub debug_bpf: bool,
}

impl Default for KernelOptions {
    fn default() -> Self {
        KernelOptions {
            ring_bytes: 16 << 20,
            debug_bpf: false,
        }
    }
}

/// Loaded and attached programs plus the reader's end of the ring buffer.
/// Dropping it detaches every program.
pub struct KernelSource {
    ring: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    logger: Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    tick: tokio::time::Interval,
    /// Keeps programs and links alive.
    _ebpf: Ebpf,
    pub attached: Vec<&'static str>,
    pub mounted_tracefs: bool,
}

/// Counters kept by the kernel side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Events dropped because the ring buffer was full.
    pub lost: u64,
    /// Failed kernel reads (a field left as 0).
    pub read_errors: u64,
}

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace"));

fn check_privileges() -> anyhow::Result<()> {
    use caps::{CapSet, Capability};
    let eff = caps::read(None, CapSet::Effective)
        .map_err(|e| anyhow!("cannot read this process's capabilities: {e}"))?;
    let ok = eff.contains(&Capability::CAP_SYS_ADMIN)
        || (eff.contains(&Capability::CAP_BPF) && eff.contains(&Capability::CAP_PERFMON));
    if !ok {
        bail!(
            "tcptrace needs root (or the CAP_BPF and CAP_PERFMON capabilities) to load its kernel programs: run it with sudo, or as root"
        );
    }
    Ok(())
}

fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        let err = std::io::Error::last_os_error();
        eprintln!(
            "tcptrace: warning: cannot raise RLIMIT_MEMLOCK ({err}); harmless on Linux >= 5.11, which charges BPF memory to the cgroup"
        );
    }
}

fn check_ring_buffer_support() -> anyhow::Result<()> {
    match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(true) => Ok(()),
        Ok(false) => bail!(
            "this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF needs Linux >= 5.8): run tcptrace on a newer kernel"
        ),
        Err(e) => bail!(
            "cannot create BPF maps ({e}): tcptrace needs root (or CAP_BPF) and a kernel with BPF enabled"
        ),
    }
}

impl KernelSource {
    /// Runs the start-up checks, loads and attaches everything. Prints nothing; the caller
    /// reports success.
    pub fn open(opts: &KernelOptions) -> anyhow::Result<KernelSource> {
        check_privileges()?;
        let (fs, mounted_tracefs) = tracefs::TraceFs::locate_or_mount()?;
        let btf = btf::KernelBtf::load()?;
        let mut layout = offsets::tracepoint_offsets(&fs)?;
        layout.kernel = offsets::kernel_offsets(&btf)?;
        check_ring_buffer_support()?;
        raise_memlock();

        if !opts.ring_bytes.is_power_of_two() || opts.ring_bytes < 4096 {
            bail!(
                "--ring-size {}: must be a power of two of at least 4096 bytes (e.g. 16M)",
                opts.ring_bytes
            );
        }
        let config = Config {
            // Wake the reader when a quarter of the ring is waiting; the drain timer handles
            // the rest. See the kernel crate for why.
            wakeup_bytes: u64::from(opts.ring_bytes / 4),
            debug: u32::from(opts.debug_bpf),
            _pad: 0,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &layout, true)
            .override_global("CONFIG", &config, true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| load_error(&e))?;

        let logger = if opts.debug_bpf {
            let l = aya_log::EbpfLogger::init(&mut ebpf)
                .map_err(|e| anyhow!("cannot start aya-log for --debug-bpf: {e}"))?;
            // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd lives.
            let fd = unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                .map_err(|e| anyhow!("registering the aya-log buffer with tokio: {}", e.into_parts().1))?;
            Some(fd)
        } else {
            None
        };

        let mut attached = Vec::new();
        for (prog, category, name) in TRACEPOINTS {
            let p: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("kernel object has no program {prog} (build problem)"))?
                .try_into()
                .map_err(|e| anyhow!("program {prog}: {e}"))?;
            p.load()
                .map_err(|e| anyhow!("loading program {prog} for {category}/{name}: {e:#}"))?;
            p.attach(category, name)
                .map_err(|e| anyhow!("attaching {prog} to tracepoint {category}/{name}: {e:#}"))?;
            attached.push(prog);
        }

        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or_else(|| anyhow!("kernel object has no EVENTS map (build problem)"))?,
        )?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map("COUNTERS")
                .ok_or_else(|| anyhow!("kernel object has no COUNTERS map (build problem)"))?,
        )?;
        let mut tick = tokio::time::interval(DRAIN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(KernelSource {
            // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd lives.
            ring: unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| anyhow!("registering the ring buffer with tokio: {}", e.into_parts().1))?,
            counters,
            logger,
            tick,
            _ebpf: ebpf,
            attached,
            mounted_tracefs,
        })
    }

    /// Sleeps until there is something to drain: a kernel wake-up or the drain timer.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        let KernelSource {
            ring, logger, tick, ..
        } = self;
        tokio::select! {
            guard = ring.readable_mut() => {
                guard.context("waiting on the ring buffer")?.clear_ready();
            }
            _ = tick.tick() => {}
            Some(guard) = async {
                match logger.as_mut() {
                    Some(l) => Some(l.readable_mut().await),
                    None => std::future::pending().await,
                }
            } => {
                let mut guard = guard.context("waiting on the aya-log buffer")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
        Ok(())
    }

    /// Takes every record waiting in the ring buffer.
    pub fn drain(&mut self, out: &mut Vec<Event>, bad: &mut Vec<DecodeError>) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            match Event::decode(&item) {
                Ok(ev) => out.push(ev),
                Err(e) => bad.push(e),
            }
        }
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> KernelCounters {
        let sum = |i: u32| -> u64 {
            self.counters
                .get(&i, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            lost: sum(counter::LOST),
            read_errors: sum(counter::READ_ERRORS),
        }
    }

    pub fn ring_fd(&self) -> i32 {
        self.ring.get_ref().as_raw_fd()
    }
}

fn load_error(e: &aya::EbpfError) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("EPERM") || text.contains("Operation not permitted") {
        return anyhow!(
            "the kernel refused tcptrace's programs ({text}): run as root, and check that no LSM or lockdown policy forbids BPF"
        );
    }
    anyhow!("loading tcptrace's kernel programs failed: {text}")
}
