//! The live source: loads tcptrace's kernel programs, attaches them to the TCP tracepoints and
//! reads their ring buffer.
//!
//! Start-up checks come first and fail with one line that names the fix (privileges, tracefs,
//! BTF, a missing tracepoint, no ring buffer support). The reader is async and never busy-polls:
//! it sleeps until the kernel forces a wake-up (enough bytes waiting) or its drain timer fires,
//! then drains everything in one batch.
mod aggregates;
pub mod btf;
mod offsets;
mod rings;
pub mod tracefs;

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapType, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use tcptrace_common::{Config, MAX_KERNEL_PORTS, agg, counter};
use tokio::io::{Interest, unix::AsyncFd};

pub use offsets::{RETRANSMIT_PROGRAM, STATE_PROGRAM, TRACEPOINTS};

/// The tp_btf program that replaces [`RETRANSMIT_PROGRAM`] where it loads.
const RETRANSMIT_BTF: &str = "retransmit_btf";
pub use rings::CHUNK;

use crate::{
    aggregate::PassiveMethod,
    event::{DecodeError, Event},
};

/// How often the reader drains the ring buffer when the kernel has not woken it.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(25);
/// The same in aggregation mode until [`KernelSource::pace`] sets it from the caller's tick.
pub const AGG_DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// How to measure passive (server-side) handshakes; see [`PassiveMethod`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PassiveChoice {
    /// In-kernel aggregation: srtt (sock_ops would add ~45 % to its kernel time). Streaming:
    /// sock_ops on the cgroup v2 root if it can attach (each SYN is an event), else srtt.
    #[default]
    Auto,
    /// sock_ops only (fail if it cannot attach).
    SockOps,
    /// The kernel's SYN-ACK RTT estimate via tp_btf (no cgroup needed).
    Srtt,
}

/// How streaming mode hooks state changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StateHook {
    /// btf if it loads, else tracepoint (with a note).
    #[default]
    Auto,
    /// A tp_btf program that reads the socket itself (fail if it cannot load).
    Btf,
    /// The classic `sock/inet_sock_set_state` tracepoint and its record.
    Tracepoint,
}

#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Emit aya-log debug lines from the kernel programs.
    pub debug_bpf: bool,
    pub passive: PassiveChoice,
    /// Streaming mode's state-change program.
    pub state_hook: StateHook,
    /// In-kernel aggregation (see `tcptrace_common::agg`), or None to stream every transition.
    pub aggregate: Option<KernelAggregation>,
}

/// Aggregation mode's settings: the user's filters (the kernel applies them) and table sizes.
#[derive(Clone, Debug, Default)]
pub struct KernelAggregation {
    /// Namespace inode, 0 = any.
    pub netns: u32,
    /// AF_INET, AF_INET6 or 0.
    pub family: u16,
    /// At most `tcptrace_common::MAX_KERNEL_PORTS`.
    pub ports: Vec<u16>,
    /// Ports broken out (`--max-ports`).
    pub max_ports: u32,
    /// SYNs that may wait for their accepted socket at once.
    pub max_syns: u32,
    /// Sockets whose state-entry time the kernel keeps at once (`--max-sockets`).
    pub max_sockets: u32,
}

impl Default for KernelOptions {
    fn default() -> Self {
        KernelOptions {
            ring_bytes: 16 << 20,
            debug_bpf: false,
            passive: PassiveChoice::Auto,
            state_hook: StateHook::Auto,
            aggregate: None,
        }
    }
}

/// The cgroup v2 mount point, from /proc/mounts (hosts differ: /sys/fs/cgroup or
/// /sys/fs/cgroup/unified on hybrid layouts).
pub fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    cgroup2_in_mounts(&mounts)
}

fn cgroup2_in_mounts(mounts: &str) -> Option<std::path::PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| std::path::PathBuf::from(dir))
    })
}

/// Loaded and attached programs plus the reader's end of the ring buffer.
/// Dropping it detaches every program.
pub struct KernelSource {
    rings: rings::Rings,
    counters: PerCpuArray<MapData, u64>,
    logger: Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    tick: tokio::time::Interval,
    /// Keeps programs and links alive.
    _ebpf: Ebpf,
    /// The attached programs' fds, for their recursion-miss counts.
    prog_fds: Vec<i32>,
    /// Aggregation mode's reader (None when streaming).
    agg: Option<aggregates::AggReader>,
    pub attached: Vec<&'static str>,
    pub mounted_tracefs: bool,
    /// How passive handshakes are measured on this run, and why if it is the fallback.
    pub passive_method: PassiveMethod,
    pub passive_note: Option<String>,
    /// Streaming under `--state-hook auto` when the tp_btf program could not load: why.
    pub state_note: Option<String>,
    /// Why retransmits come through the classic tracepoint although state changes do not.
    pub retransmit_note: Option<String>,
}

/// Counters kept by the kernel side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Events dropped because the ring buffer was full.
    pub lost: u64,
    /// Program runs the kernel skipped because another BPF program was already running on that
    /// CPU (its recursion guard; the program's `recursion_misses`): events never made.
    pub missed: u64,
    /// Failed kernel reads (a field left as 0).
    pub read_errors: u64,
}

impl KernelCounters {
    /// Every event the kernel saw but tcptrace did not get.
    pub fn total_lost(&self) -> u64 {
        self.lost + self.missed
    }
}

/// `recursion_misses` of a BPF program: asked of the kernel with `BPF_OBJ_GET_INFO_BY_FD` (one
/// syscall; it is read at every drain, up to 40 times a second, and opening and parsing each
/// program's /proc/self/fdinfo text was a tenth of `watch`'s own CPU), else from that text
/// (kernels that refuse the call without privileges, i.e. after --user, before Linux 6.5).
fn recursion_misses(fd: i32) -> u64 {
    use aya_obj::generated::{bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, bpf_prog_info};
    /// `bpf_attr.info`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // Only the fields up to the counter are asked for: the kernel fills min(info_len, its size).
    let len = std::mem::offset_of!(bpf_prog_info, recursion_misses) + 8;
    let mut info = [0u8; std::mem::size_of::<bpf_prog_info>()];
    let mut attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: len as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` describes a writable buffer of `len` bytes that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if r == 0 {
        let at = len - 8;
        return u64::from_ne_bytes(info[at..len].try_into().unwrap_or_default());
    }
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("recursion_misses:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
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
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, e)| anyhow!("reading the possible CPUs from {path}: {e}"))?;
        let (rings, ring_bytes) = rings::ring_sizes(cpus as u32, opts.ring_bytes);
        let mut config = Config {
            // Wake the reader when a quarter of a ring is waiting; the drain timer handles
            // the rest. See the kernel crate for why.
            wakeup_bytes: u64::from(ring_bytes / 4),
            debug: u32::from(opts.debug_bpf),
            rings,
            ..Config::ZERO
        };
        let mut loader = EbpfLoader::new();
        for (i, name) in rings::NAMES.iter().enumerate() {
            // Rings no CPU writes to keep one page.
            let bytes = if (i as u32) < rings { ring_bytes } else { 4096 };
            loader.map_max_entries(name, bytes);
        }
        if let Some(a) = &opts.aggregate {
            if a.ports.len() > MAX_KERNEL_PORTS {
                bail!(
                    "in-kernel aggregation filters on at most {MAX_KERNEL_PORTS} ports: give fewer --port values, or --aggregate user"
                );
            }
            config.aggregate = 1;
            config.netns = a.netns;
            config.family = a.family;
            config.nports = a.ports.len() as u16;
            config.ports[..a.ports.len()].copy_from_slice(&a.ports);
            // A block of rows per port (listening or remote): dwell in 11 states, handshakes,
            // queues.
            // A power of two: the kernel picks a port's blocks by masking a hash.
            let blocks = a.max_ports.clamp(1, 4096).next_power_of_two();
            config.port_blocks = blocks;
            loader.map_max_entries("PORT_INDEX", blocks);
            loader.map_max_entries("PORT_OWNER", blocks);
            loader.map_max_entries("PORT_ROWS", blocks * agg::PORT_METRICS);
            // Slot tables: a power of two, so a mask picks the slot.
            let syns = a.max_syns.clamp(1, 1 << 24).next_power_of_two();
            let socks = a.max_sockets.clamp(1, 1 << 26).next_power_of_two();
            config.syns_mask = syns - 1;
            config.socks_mask = socks - 1;
            loader.map_max_entries("SYNS", syns);
            loader.map_max_entries("SOCKS", socks);
        } else {
            // Streaming: the aggregation tables are never used; keep them at one slot.
            for map in [
                "SYNS",
                "SOCKS",
                "PORT_INDEX",
                "PORT_OWNER",
                "PORT_ROWS",
                "PORT_CACHE",
            ] {
                loader.map_max_entries(map, 1);
            }
        }
        let mut ebpf = loader
            .override_global("OFFSETS", &layout, true)
            .override_global("CONFIG", &config, true)
            .load(EBPF_OBJECT)
            .map_err(|e| load_error(&e))?;

        let logger = if opts.debug_bpf {
            let l = aya_log::EbpfLogger::init(&mut ebpf)
                .map_err(|e| anyhow!("cannot start aya-log for --debug-bpf: {e}"))?;
            // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd lives.
            let fd =
                unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }.map_err(|e| {
                    anyhow!(
                        "registering the aya-log buffer with tokio: {}",
                        e.into_parts().1
                    )
                })?;
            Some(fd)
        } else {
            None
        };

        let mut attached = Vec::new();
        let mut btf = ProgramBtf::default();
        let aggregating = opts.aggregate.is_some();
        let mut state_note = None;
        // Streaming through the classic tracepoint (its record copied by `sock_set_state`).
        let mut classic_state = false;
        if aggregating {
            attach_state_program(&mut ebpf, &mut btf, "state_agg").map_err(|e| {
                anyhow!(
                    "{e} (in-kernel aggregation; TCPTRACE_VERIFIER_LOG=FILE saves the verifier's whole log; --aggregate user avoids this program)"
                )
            })?;
            attached.push("state_agg");
        } else if opts.state_hook == StateHook::Tracepoint {
            classic_state = true;
        } else {
            let fields = [
                ("inet_sock.inet_sport", layout.kernel.inet_sport),
                (
                    "sock.__sk_common.skc_rcv_saddr",
                    layout.kernel.sock_rcv_saddr,
                ),
                ("sock.__sk_common.skc_daddr", layout.kernel.sock_daddr),
                (
                    "sock.__sk_common.skc_v6_rcv_saddr",
                    layout.kernel.sock_v6_saddr,
                ),
                ("sock.sk_protocol", layout.kernel.sock_protocol),
            ];
            let missing = fields.iter().find(|(_, off)| *off == u32::MAX);
            let r = match missing {
                Some((name, _)) => Err(anyhow!("this kernel's BTF has no {name}")),
                None => attach_state_program(&mut ebpf, &mut btf, "state_stream"),
            };
            match r {
                Ok(()) => attached.push("state_stream"),
                Err(e) if opts.state_hook == StateHook::Btf => {
                    return Err(anyhow!(
                        "{e:#} (--state-hook btf; --state-hook tracepoint streams through the classic tracepoint)"
                    ));
                }
                Err(e) => {
                    state_note = Some(first_line(&format!("{e:#}")));
                    classic_state = true;
                }
            }
        }
        // Retransmits through their BTF tracepoint where state changes use one (classic
        // tracepoint programs are skipped while another BPF program runs, see `retransmit_btf`).
        let mut retransmit_note = None;
        let mut classic_retransmit = true;
        if !classic_state {
            match attach_btf_program(&mut ebpf, &mut btf, RETRANSMIT_BTF, "tcp_retransmit_skb") {
                Ok(()) => {
                    attached.push(RETRANSMIT_BTF);
                    classic_retransmit = false;
                }
                Err(e) => retransmit_note = Some(first_line(&format!("{e:#}"))),
            }
        }
        for (prog, category, name) in TRACEPOINTS {
            if prog == STATE_PROGRAM && !classic_state {
                // state_agg or state_stream hooks state changes instead.
                continue;
            }
            if prog == RETRANSMIT_PROGRAM && !classic_retransmit {
                continue;
            }
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

        let (passive_method, passive_note) =
            attach_passive(&mut ebpf, &mut btf, opts.passive, aggregating)?;
        match (passive_method, aggregating) {
            (PassiveMethod::SockOps, _) => attached.push("tcp_sockops"),
            (PassiveMethod::Srtt, false) => attached.push("passive_rtt"),
            // state_agg reads srtt itself, once told to.
            (PassiveMethod::Srtt, true) => {
                let mut settings: Array<_, u32> =
                    Array::try_from(ebpf.map_mut("SETTINGS").ok_or_else(|| {
                        anyhow!("kernel object has no SETTINGS map (build problem)")
                    })?)
                    .map_err(|e| anyhow!("map SETTINGS: {e}"))?;
                settings.set(0, 1, 0).map_err(|e| {
                    anyhow!("telling state_agg to time passive handshakes by srtt: {e}")
                })?;
            }
        }
        let agg = if aggregating {
            Some(aggregates::AggReader::new(&mut ebpf)?)
        } else {
            None
        };

        let rings = rings::NAMES[..rings as usize]
            .iter()
            .map(|name| {
                let map = ebpf
                    .take_map(name)
                    .ok_or_else(|| anyhow!("kernel object has no {name} map (build problem)"))?;
                Ok(RingBuf::try_from(map)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map("COUNTERS")
                .ok_or_else(|| anyhow!("kernel object has no COUNTERS map (build problem)"))?,
        )?;
        let prog_fds = ebpf
            .programs()
            .filter(|(name, _)| attached.contains(name))
            .filter_map(|(_, p)| p.fd().ok().map(|fd| fd.as_fd().as_raw_fd()))
            .collect();
        let mut tick = tokio::time::interval(if aggregating {
            AGG_DRAIN_INTERVAL
        } else {
            DRAIN_INTERVAL
        });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(KernelSource {
            rings: rings::Rings::new(rings)?,
            counters,
            logger,
            tick,
            _ebpf: ebpf,
            prog_fds,
            agg,
            attached,
            mounted_tracefs,
            passive_method,
            passive_note,
            state_note,
            retransmit_note,
        })
    }

    /// Aggregation mode: drains on the timer only every `every`. Only the rare retransmits and
    /// resets cross the ring buffer there (a quarter-full ring still wakes the reader at once),
    /// so waking ten times a second was most of what an idle `watch` cost.
    pub fn pace(&mut self, every: Duration) {
        if self.agg.is_some() {
            let mut tick = tokio::time::interval(every.max(DRAIN_INTERVAL));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            self.tick = tick;
        }
    }

    /// Sleeps until there is something to drain: a kernel wake-up or the drain timer.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        let KernelSource {
            rings,
            logger,
            tick,
            ..
        } = self;
        tokio::select! {
            r = rings.readable() => r?,
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

    /// Starts taking the records waiting in the ring buffers: all of them when `last` (the end
    /// of a run), else those no other CPU can still precede (see `rings`).
    pub fn start_drain(&mut self, last: bool) {
        self.rings.start(crate::sink::monotonic_now_ns(), last);
    }

    /// The next chunk of the drain, merged in time order; false once the drain is over.
    pub fn drain(&mut self, out: &mut Vec<Event>, bad: &mut Vec<DecodeError>) -> bool {
        self.rings.drain(out, bad)
    }

    /// Aggregation mode: whether the kernel measures transitions itself.
    pub fn aggregating(&self) -> bool {
        self.agg.is_some()
    }

    /// Aggregation mode: what the kernel measured since the previous call (None when
    /// streaming).
    pub fn fold(&mut self) -> anyhow::Result<Option<crate::folded::Folded>> {
        match &mut self.agg {
            Some(r) => r.read(&self.counters).map(Some),
            None => Ok(None),
        }
    }

    /// Aggregation mode: the kernel's table of socket state-entry times (slots picked by
    /// socket cookie), for sock_diag snapshots to look CLOSE_WAIT sockets up in. Once.
    pub fn take_sock_times(&mut self) -> Option<crate::source::diag::SockTimesTable> {
        self.agg.as_ref()?;
        let map = Array::try_from(self._ebpf.take_map("SOCKS")?).ok()?;
        let slots = map.len();
        Some(crate::source::diag::SockTimesTable {
            map,
            mask: slots.saturating_sub(1),
        })
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
            missed: self.prog_fds.iter().map(|fd| recursion_misses(*fd)).sum(),
            read_errors: sum(counter::READ_ERRORS),
        }
    }
}

/// Attaches the passive-handshake probe: sock_ops on the cgroup v2 root, or the tp_btf srtt
/// fallback. Returns the method and, for the fallback under `auto`, why.
fn attach_passive(
    ebpf: &mut Ebpf,
    btf: &mut ProgramBtf,
    choice: PassiveChoice,
    aggregating: bool,
) -> anyhow::Result<(PassiveMethod, Option<String>)> {
    // Aggregating, sock_ops' nine callbacks per connection (two of which do any work) are a
    // third of the kernel time; srtt times the same handshake from its first SYN-ACK, µs after
    // the SYN, and state_agg takes the accept queue from the child (see `state_agg`).
    let srtt = choice == PassiveChoice::Srtt || (choice == PassiveChoice::Auto && aggregating);
    let sock_ops_error = if srtt {
        None
    } else {
        match attach_sock_ops(ebpf) {
            Ok(()) => return Ok((PassiveMethod::SockOps, None)),
            Err(e) if choice == PassiveChoice::SockOps => return Err(e),
            Err(e) => Some(first_line(&format!("{e:#}"))),
        }
    };
    let note = sock_ops_error.map(|e| format!("sock_ops unavailable ({e})"));
    if aggregating {
        return Ok((PassiveMethod::Srtt, note));
    }
    attach_state_program(ebpf, btf, "passive_rtt")?;
    Ok((PassiveMethod::Srtt, note))
}

/// Loads and attaches one of the object's tp_btf programs on `inet_sock_set_state`. A verifier
/// rejection keeps its first line; TCPTRACE_VERIFIER_LOG=FILE saves the whole log.
fn attach_state_program(ebpf: &mut Ebpf, btf: &mut ProgramBtf, prog: &str) -> anyhow::Result<()> {
    attach_btf_program(ebpf, btf, prog, "inet_sock_set_state")
}

/// The kernel's BTF that loading a tp_btf program needs, parsed once (~20 ms here) on first use.
#[derive(Default)]
struct ProgramBtf(Option<aya::Btf>);

impl ProgramBtf {
    fn get(&mut self) -> anyhow::Result<&aya::Btf> {
        if self.0.is_none() {
            let btf = aya::Btf::from_sys_fs().map_err(|e| anyhow!("reading kernel BTF: {e}"))?;
            self.0 = Some(btf);
        }
        Ok(self.0.as_ref().expect("just set"))
    }
}

/// Loads and attaches one of the object's tp_btf programs on tracepoint `function`.
fn attach_btf_program(
    ebpf: &mut Ebpf,
    btf: &mut ProgramBtf,
    prog: &str,
    function: &str,
) -> anyhow::Result<()> {
    let btf = btf.get()?;
    let p: &mut aya::programs::BtfTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("kernel object has no program {prog} (build problem)"))?
        .try_into()
        .map_err(|e| anyhow!("program {prog}: {e}"))?;
    p.load(function, btf).map_err(|e| {
        if let Some(path) = std::env::var_os("TCPTRACE_VERIFIER_LOG") {
            let _ = std::fs::write(path, format!("{e:#}"));
        }
        anyhow!(
            "loading {prog} (tp_btf/{function}): {}",
            first_line(&format!("{e:#}"))
        )
    })?;
    p.attach()
        .map_err(|e| anyhow!("attaching {prog} (tp_btf/{function}): {e:#}"))?;
    Ok(())
}

fn attach_sock_ops(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let root = cgroup2_mount().ok_or_else(|| anyhow!("no cgroup v2 mount in /proc/mounts"))?;
    let cgroup = std::fs::File::open(&root)
        .with_context(|| format!("opening the cgroup v2 root {}", root.display()))?;
    let p: &mut aya::programs::SockOps = ebpf
        .program_mut("tcp_sockops")
        .ok_or_else(|| anyhow!("kernel object has no program tcp_sockops (build problem)"))?
        .try_into()
        .map_err(|e| anyhow!("program tcp_sockops: {e}"))?;
    p.load()
        .map_err(|e| anyhow!("loading tcp_sockops: {}", first_line(&format!("{e:#}"))))?;
    p.attach(cgroup, aya::programs::CgroupAttachMode::Single)
        .map_err(|e| anyhow!("attaching tcp_sockops to {}: {e:#}", root.display()))?;
    Ok(())
}

/// Verifier logs run to hundreds of lines: keep the first line and the verifier's verdict.
fn first_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    let verdict = text.lines().rev().find(|l| {
        !l.is_empty()
            && !l.starts_with("verification time")
            && !l.starts_with("stack depth")
            && !l.starts_with("processed ")
            && *l != ")"
    });
    match verdict {
        Some(v) if v != first => format!("{first} ... {v}"),
        _ => first.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_wherever_it_is() {
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_in_mounts(hybrid),
            Some("/sys/fs/cgroup/unified".into())
        );
        assert_eq!(
            cgroup2_in_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            Some("/sys/fs/cgroup".into())
        );
        assert_eq!(cgroup2_in_mounts("proc /proc proc rw 0 0\n"), None);
    }
}
