//! Recordings: the raw event stream saved to a file (`--record`) and read back (`replay`).
//!
//! Format, version 1 (all integers little-endian):
//! - a 64-byte header: magic `TCPTRACE` (8 bytes), version u32 = 1, record size u32 = 96,
//!   start u64 (kernel CLOCK_MONOTONIC ns when tracing started), wall-clock offset i64
//!   (CLOCK_REALTIME - CLOCK_MONOTONIC, ns), passive-handshake method u8 (0 sock_ops, 1 srtt),
//!   zeros to 64 bytes;
//! - records of 96 bytes, the kernel's own `RawEvent` layout (see tcptrace-common);
//! - socket snapshots from the sock_diag poller, as records with kind bytes 254 (one socket:
//!   `ts_ns` snapshot time, `netns`, `family`, ports and addresses, `oldstate` = state,
//!   `skaddr` = inode, `aux32` = uid, `tgid` = receive queue, `tid` = send queue, `aux` = drop
//!   counter or u64::MAX), 253 (a kernel counter: `aux32` = index in the counter table of
//!   `source/procnet.rs`, `aux` = value), 252 (a sysctl: `aux32` = index in its sysctl table,
//!   value as text in `saddr`+`daddr`) and 251 (end of one namespace's snapshot; `aux32` bits:
//!   1 it dumped TIME_WAIT sockets, 2 listeners only, 4 vanished FIN_WAIT2 sockets looked up;
//!   `aux` = its sockstat TIME_WAIT count + 1, or 0);
//! - socket owners as resolved live, kind 250: `skaddr` = inode, `tgid` = pid, `comm`, and the
//!   cgroup path in 32-byte pieces in `saddr`+`daddr` (`aux32` = piece index, `aux` = pieces);
//! - gaps where events were lost, kind 249: `aux` = how many;
//! - a 96-byte trailer: a record whose kind byte (offset 93) is 255, with `ts_ns` = end of
//!   tracing, `skaddr` = events lost in the kernel, `aux` = undecodable records.
//!
//! A file that ends mid-record or without its trailer, or holds a record that does not decode,
//! is reported with the byte offset of the problem.
use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::Path,
};

use anyhow::{Context as _, anyhow, bail};
use tcptrace_common::{RAW_EVENT_SIZE, RawEvent};

use crate::{
    aggregate::PassiveMethod,
    diagnose::Snapshot,
    event::{Event, TcpState},
    output,
    owners::ProcessInfo,
    source::{diag::DiagSocket, procnet},
};

const DIAG_SOCKET: u8 = 254;
const COUNTER: u8 = 253;
const SYSCTL: u8 = 252;
const SNAPSHOT_END: u8 = 251;
const OWNER: u8 = 250;
const GAP: u8 = 249;

/// What a recording holds, in order.
#[derive(Clone, Debug)]
pub enum Item {
    Event(Event),
    Snapshot(Snapshot),
    /// A socket inode's owner, as the live run resolved it.
    Owner(u32, ProcessInfo),
    /// Events were lost here (how many).
    Gap(u64),
}

fn blank(kind: u8, ts_ns: u64, netns: u32) -> RawEvent {
    let mut r = raw_from(&[0u8; RAW_EVENT_SIZE]);
    r.kind = kind;
    r.ts_ns = ts_ns;
    r.netns = netns;
    r
}

pub const MAGIC: &[u8; 8] = b"TCPTRACE";
pub const VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 64;
/// Kind byte of the trailer record.
pub const TRAILER_KIND: u8 = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub start_ns: u64,
    pub wall_offset_ns: i64,
    pub passive_method: PassiveMethod,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trailer {
    pub end_ns: u64,
    pub lost: u64,
    pub undecodable: u64,
}

fn raw_bytes(r: &RawEvent) -> [u8; RAW_EVENT_SIZE] {
    // SAFETY: RawEvent is repr(C) plain data of exactly RAW_EVENT_SIZE bytes with no padding.
    unsafe { std::mem::transmute::<RawEvent, [u8; RAW_EVENT_SIZE]>(*r) }
}

fn raw_from(bytes: &[u8; RAW_EVENT_SIZE]) -> RawEvent {
    // SAFETY: as above; every bit pattern is a valid RawEvent.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) }
}

pub struct Recorder {
    out: BufWriter<File>,
    path: String,
}

impl Recorder {
    /// Creates the file now (so a bad path fails before tracing starts).
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        Ok(Recorder {
            out: BufWriter::with_capacity(1 << 20, output::create(path)?),
            path: path.display().to_string(),
        })
    }

    pub fn write_header(&mut self, h: &Header) -> anyhow::Result<()> {
        let mut buf = [0u8; HEADER_SIZE];
        buf[..8].copy_from_slice(MAGIC);
        buf[8..12].copy_from_slice(&VERSION.to_le_bytes());
        buf[12..16].copy_from_slice(&(RAW_EVENT_SIZE as u32).to_le_bytes());
        buf[16..24].copy_from_slice(&h.start_ns.to_le_bytes());
        buf[24..32].copy_from_slice(&h.wall_offset_ns.to_le_bytes());
        buf[32] = match h.passive_method {
            PassiveMethod::SockOps => 0,
            PassiveMethod::Srtt => 1,
        };
        self.out.write_all(&buf).context(self.path.clone())
    }

    pub fn write(&mut self, events: &[Event]) -> anyhow::Result<()> {
        for ev in events {
            self.out
                .write_all(&raw_bytes(&ev.to_raw()))
                .with_context(|| format!("writing {}", self.path))?;
        }
        Ok(())
    }

    pub fn write_snapshot(&mut self, s: &Snapshot) -> anyhow::Result<()> {
        let mut recs = Vec::with_capacity(s.sockets.len() + 32);
        for d in &s.sockets {
            let mut r = blank(DIAG_SOCKET, s.ts_ns, s.netns);
            let ev = Event {
                ts_ns: 0,
                skaddr: 0,
                pid: 0,
                tid: 0,
                comm: Default::default(),
                netns: 0,
                local: d.local,
                remote: d.remote,
                kind: crate::event::EventKind::ResetReceived { state: None },
                gap: false,
            }
            .to_raw();
            (r.saddr, r.daddr, r.sport, r.dport, r.family) =
                (ev.saddr, ev.daddr, ev.sport, ev.dport, ev.family);
            r.oldstate = d.state as u8;
            r.skaddr = u64::from(d.inode);
            r.aux32 = d.uid;
            r.tgid = d.recv_q;
            r.tid = d.send_q;
            r.aux = d.drops.map_or(u64::MAX, u64::from);
            recs.push(r);
        }
        for (name, v) in &s.counters {
            if let Some(i) = procnet::COUNTERS.iter().position(|(_, n)| n == name) {
                let mut r = blank(COUNTER, s.ts_ns, s.netns);
                r.aux32 = i as u32;
                r.aux = *v as u64;
                recs.push(r);
            }
        }
        for (name, v) in &s.sysctls {
            if let Some(i) = procnet::SYSCTLS.iter().position(|n| n == name) {
                let mut r = blank(SYSCTL, s.ts_ns, s.netns);
                r.aux32 = i as u32;
                let b = v.as_bytes();
                let n = b.len().min(31);
                let mut text = [0u8; 32];
                text[..n].copy_from_slice(&b[..n]);
                r.saddr.copy_from_slice(&text[..16]);
                r.daddr.copy_from_slice(&text[16..]);
                recs.push(r);
            }
        }
        let mut end = blank(SNAPSHOT_END, s.ts_ns, s.netns);
        // Bit 0: TIME_WAIT dumped; bit 1: listeners only (recordings older than that bit have
        // it clear, as their polls always dumped CLOSE_WAIT and FIN_WAIT2); bit 2: FIN_WAIT2
        // sockets resolved. `aux`: the sockstat TIME_WAIT count + 1, 0 if unknown (as in older
        // recordings, whose readers ignore both).
        end.aux32 = u32::from(s.time_wait_counted)
            | u32::from(s.listeners_only) << 1
            | u32::from(s.fin_wait2_resolved) << 2;
        end.aux = s.time_wait_total.map_or(0, |n| n.saturating_add(1));
        recs.push(end);
        for r in &recs {
            self.out
                .write_all(&raw_bytes(r))
                .with_context(|| format!("writing {}", self.path))?;
        }
        Ok(())
    }

    pub fn write_gap(&mut self, lost: u64) -> anyhow::Result<()> {
        let mut r = blank(GAP, 0, 0);
        r.aux = lost;
        self.out
            .write_all(&raw_bytes(&r))
            .with_context(|| format!("writing {}", self.path))
    }

    pub fn write_owner(&mut self, inode: u32, p: &ProcessInfo) -> anyhow::Result<()> {
        let cg = p.cgroup.as_deref().map(str::as_bytes);
        let chunks: Vec<&[u8]> = match cg {
            Some(b) if !b.is_empty() => b.chunks(32).collect(),
            _ => vec![&[][..]],
        };
        for (i, chunk) in chunks.iter().enumerate() {
            let mut r = blank(OWNER, 0, 0);
            r.skaddr = u64::from(inode);
            r.tgid = p.pid;
            r.comm = crate::event::Comm::from_str_lossy(&p.comm).0;
            r.aux32 = i as u32;
            // The high bit says whether there is a cgroup at all.
            r.aux = chunks.len() as u64 | if cg.is_some() { 1 << 63 } else { 0 };
            let mut text = [0u8; 32];
            text[..chunk.len()].copy_from_slice(chunk);
            r.saddr.copy_from_slice(&text[..16]);
            r.daddr.copy_from_slice(&text[16..]);
            self.out
                .write_all(&raw_bytes(&r))
                .with_context(|| format!("writing {}", self.path))?;
        }
        Ok(())
    }

    pub fn finish(mut self, t: &Trailer) -> anyhow::Result<()> {
        let mut r: RawEvent = raw_from(&[0u8; RAW_EVENT_SIZE]);
        r.kind = TRAILER_KIND;
        r.ts_ns = t.end_ns;
        r.skaddr = t.lost;
        r.aux = t.undecodable;
        self.out
            .write_all(&raw_bytes(&r))
            .and_then(|()| self.out.flush())
            .and_then(|()| self.out.get_ref().sync_all())
            .with_context(|| format!("writing {}", self.path))
    }
}

/// Reads a recording record by record.
pub struct Replay<R: Read> {
    input: R,
    pub header: Header,
    offset: u64,
    name: String,
    trailer: Option<Trailer>,
    partial: Option<Snapshot>,
    owner_text: Vec<u8>,
}

impl Replay<BufReader<File>> {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Replay::new(
            BufReader::with_capacity(1 << 20, f),
            &path.display().to_string(),
        )
    }
}

/// Reads as many bytes as are there, up to `buf.len()`.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> Replay<R> {
    pub fn new(mut input: R, name: &str) -> anyhow::Result<Self> {
        let mut h = [0u8; HEADER_SIZE];
        let n = read_full(&mut input, &mut h).with_context(|| format!("reading {name}"))?;
        if n < 8 || &h[..8] != MAGIC {
            bail!("{name}: not a tcptrace recording (bad magic at offset 0)");
        }
        if n < HEADER_SIZE {
            bail!("{name}: truncated header at offset {n} (expected {HEADER_SIZE} bytes)");
        }
        let le32 = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap_or_default());
        let le64 = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
        let version = le32(8);
        if version != VERSION {
            bail!(
                "{name}: recording format version {version} at offset 8; this tcptrace reads version {VERSION}"
            );
        }
        let size = le32(12);
        if size as usize != RAW_EVENT_SIZE {
            bail!("{name}: record size {size} at offset 12, expected {RAW_EVENT_SIZE}");
        }
        let passive_method = match h[32] {
            0 => PassiveMethod::SockOps,
            1 => PassiveMethod::Srtt,
            m => bail!("{name}: unknown passive method {m} at offset 32"),
        };
        Ok(Replay {
            input,
            header: Header {
                start_ns: le64(16),
                wall_offset_ns: le64(24) as i64,
                passive_method,
            },
            offset: HEADER_SIZE as u64,
            name: name.to_string(),
            trailer: None,
            partial: None,
            owner_text: Vec::new(),
        })
    }

    /// The next event, skipping snapshots; `Ok(None)` after the trailer.
    pub fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            match self.next_item()? {
                None => return Ok(None),
                Some(Item::Event(e)) => return Ok(Some(e)),
                Some(Item::Snapshot(_) | Item::Owner(..) | Item::Gap(_)) => {}
            }
        }
    }

    /// The next event or complete snapshot; `Ok(None)` after the trailer.
    pub fn next_item(&mut self) -> anyhow::Result<Option<Item>> {
        loop {
            let Some(raw) = self.next_raw()? else {
                return Ok(None);
            };
            let at = self.offset - RAW_EVENT_SIZE as u64;
            let corrupt =
                |what: &str| anyhow!("{}: corrupt {what} record at offset {at}", self.name);
            match raw.kind {
                DIAG_SOCKET | COUNTER | SYSCTL => {
                    let snap = self.partial.get_or_insert_with(|| Snapshot {
                        ts_ns: raw.ts_ns,
                        netns: raw.netns,
                        ..Snapshot::default()
                    });
                    match raw.kind {
                        DIAG_SOCKET => {
                            let addrs = Event::try_from(&RawEvent {
                                kind: tcptrace_common::kind::RESET_RECEIVED,
                                newstate: 0,
                                ..raw
                            })
                            .map_err(|_| corrupt("socket"))?;
                            let state = TcpState::from_kernel(raw.oldstate)
                                .ok_or_else(|| corrupt("socket"))?;
                            snap.sockets.push(DiagSocket {
                                state,
                                local: addrs.local,
                                remote: addrs.remote,
                                inode: raw.skaddr as u32,
                                uid: raw.aux32,
                                recv_q: raw.tgid,
                                send_q: raw.tid,
                                drops: (raw.aux != u64::MAX).then_some(raw.aux as u32),
                                // Recordings are made while streaming: no storage.
                                since_ns: None,
                                // Not recorded: only live lookups need it.
                                bound_if: 0,
                            });
                        }
                        COUNTER => {
                            let (_, name) = procnet::COUNTERS
                                .get(raw.aux32 as usize)
                                .ok_or_else(|| corrupt("counter"))?;
                            snap.counters.insert(name, raw.aux as i64);
                        }
                        _ => {
                            let name = procnet::SYSCTLS
                                .get(raw.aux32 as usize)
                                .ok_or_else(|| corrupt("sysctl"))?;
                            let mut text = raw.saddr.to_vec();
                            text.extend_from_slice(&raw.daddr);
                            let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
                            let v = String::from_utf8(text[..end].to_vec())
                                .map_err(|_| corrupt("sysctl"))?;
                            snap.sysctls.insert(name, v);
                        }
                    }
                }
                GAP => return Ok(Some(Item::Gap(raw.aux))),
                OWNER => {
                    if raw.aux32 == 0 {
                        self.owner_text.clear();
                    }
                    let mut text = raw.saddr.to_vec();
                    text.extend_from_slice(&raw.daddr);
                    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
                    self.owner_text.extend_from_slice(&text[..end]);
                    let pieces = raw.aux & !(1 << 63);
                    if u64::from(raw.aux32) + 1 >= pieces {
                        let has_cgroup = raw.aux & (1 << 63) != 0;
                        let cgroup = String::from_utf8(std::mem::take(&mut self.owner_text))
                            .map_err(|_| corrupt("owner"))?;
                        let comm = crate::event::Comm(raw.comm).as_str().into_owned();
                        return Ok(Some(Item::Owner(
                            raw.skaddr as u32,
                            ProcessInfo {
                                pid: raw.tgid,
                                comm,
                                cgroup: has_cgroup.then_some(cgroup),
                            },
                        )));
                    }
                }
                SNAPSHOT_END => {
                    let mut snap = self.partial.take().unwrap_or(Snapshot {
                        ts_ns: raw.ts_ns,
                        netns: raw.netns,
                        ..Snapshot::default()
                    });
                    snap.time_wait_counted = raw.aux32 & 1 != 0;
                    snap.listeners_only = raw.aux32 & 2 != 0;
                    snap.fin_wait2_resolved = raw.aux32 & 4 != 0;
                    snap.time_wait_total = raw.aux.checked_sub(1);
                    return Ok(Some(Item::Snapshot(snap)));
                }
                _ => {
                    return Event::try_from(&raw)
                        .map(|e| Some(Item::Event(e)))
                        .with_context(|| format!("{}: corrupt record at offset {at}", self.name));
                }
            }
        }
    }

    /// The next raw record; `Ok(None)` after the trailer.
    fn next_raw(&mut self) -> anyhow::Result<Option<RawEvent>> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        let mut buf = [0u8; RAW_EVENT_SIZE];
        let n = read_full(&mut self.input, &mut buf)
            .with_context(|| format!("reading {} at offset {}", self.name, self.offset))?;
        let at = self.offset;
        if n == 0 {
            bail!(
                "{}: truncated at offset {at}: no trailer (the recording tcptrace was killed before it could finish)",
                self.name
            );
        }
        if n < RAW_EVENT_SIZE {
            bail!(
                "{}: truncated at offset {at}: the file ends inside a record ({n} of {RAW_EVENT_SIZE} bytes)",
                self.name
            );
        }
        self.offset += RAW_EVENT_SIZE as u64;
        let raw = raw_from(&buf);
        if raw.kind == TRAILER_KIND {
            self.trailer = Some(Trailer {
                end_ns: raw.ts_ns,
                lost: raw.skaddr,
                undecodable: raw.aux,
            });
            let mut extra = [0u8; 1];
            if read_full(&mut self.input, &mut extra)? != 0 {
                bail!(
                    "{}: data after the trailer at offset {}",
                    self.name,
                    self.offset
                );
            }
            return Ok(None);
        }
        Ok(Some(raw))
    }

    pub fn trailer(&self) -> Option<Trailer> {
        self.trailer
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use super::*;
    use crate::event::{Comm, EventKind};

    fn sample(n: u64) -> Vec<Event> {
        (0..n)
            .map(|i| Event {
                ts_ns: 1_000 + i,
                skaddr: 0xffff_0000 + i,
                pid: 3,
                tid: 4,
                comm: Comm::from_str_lossy("x"),
                netns: 5,
                local: "[::1]:80".parse().unwrap(),
                remote: "[::1]:9000".parse().unwrap(),
                kind: EventKind::State {
                    old: TcpState::SynRecv,
                    new: TcpState::Established,
                },
                gap: false,
            })
            .collect()
    }

    fn recording(events: &[Event]) -> Vec<u8> {
        let path = std::env::temp_dir().join(format!(
            "tcptrace-rec-{}-{}",
            std::process::id(),
            events.len()
        ));
        let mut r = Recorder::create(&path).unwrap();
        r.write_header(&Header {
            start_ns: 900,
            wall_offset_ns: -5,
            passive_method: PassiveMethod::Srtt,
        })
        .unwrap();
        r.write(events).unwrap();
        r.write_snapshot(&snapshot()).unwrap();
        r.write_snapshot(&Snapshot {
            ts_ns: 78,
            time_wait_counted: false,
            listeners_only: true,
            time_wait_total: None,
            fin_wait2_resolved: false,
            ..snapshot()
        })
        .unwrap();
        r.write_owner(
            1234,
            &ProcessInfo {
                pid: 99,
                comm: "server".into(),
                cgroup: Some("/system.slice/a-rather-long-unit-name-for-testing.service".into()),
            },
        )
        .unwrap();
        r.finish(&Trailer {
            end_ns: 5_000,
            lost: 7,
            undecodable: 1,
        })
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        bytes
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            ts_ns: 77,
            netns: 9,
            time_wait_counted: true,
            listeners_only: false,
            time_wait_total: Some(41),
            fin_wait2_resolved: true,
            sockets: vec![DiagSocket {
                state: TcpState::Listen,
                local: "[::]:8080".parse().unwrap(),
                remote: "[::]:0".parse().unwrap(),
                inode: 1234,
                uid: 1000,
                recv_q: 3,
                send_q: 128,
                drops: Some(41),
                since_ns: None,
                bound_if: 0,
            }],
            counters: BTreeMap::from([("ListenDrops", 41), ("ListenOverflows", 40)]),
            sysctls: BTreeMap::from([("net.ipv4.ip_local_port_range", "32768 60999".to_string())]),
        }
    }

    #[test]
    fn snapshots_round_trip() {
        let bytes = recording(&sample(2));
        let mut r = Replay::new(&bytes[..], "rec").unwrap();
        let mut snaps = Vec::new();
        let mut owners = Vec::new();
        while let Some(item) = r.next_item().unwrap() {
            match item {
                Item::Snapshot(s) => snaps.push(s),
                Item::Owner(i, p) => owners.push((i, p)),
                Item::Event(_) | Item::Gap(_) => {}
            }
        }
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].0, 1234);
        assert_eq!(owners[0].1.pid, 99);
        assert_eq!(owners[0].1.comm, "server");
        assert_eq!(
            owners[0].1.cgroup.as_deref(),
            Some("/system.slice/a-rather-long-unit-name-for-testing.service")
        );
        assert_eq!(snaps.len(), 2);
        let (got, want) = (&snaps[0], snapshot());
        assert_eq!(got.sockets, want.sockets);
        assert_eq!(got.counters, want.counters);
        assert_eq!(got.sysctls, want.sysctls);
        let flags = |s: &Snapshot| {
            (
                s.ts_ns,
                s.netns,
                s.time_wait_counted,
                s.listeners_only,
                s.time_wait_total,
                s.fin_wait2_resolved,
            )
        };
        assert_eq!(flags(got), (77, 9, true, false, Some(41), true));
        assert_eq!(flags(&snaps[1]), (78, 9, false, true, None, false));
    }

    fn read_all(bytes: &[u8]) -> anyhow::Result<(Vec<Event>, Replay<&[u8]>)> {
        let mut r = Replay::new(bytes, "rec")?;
        let mut out = Vec::new();
        while let Some(e) = r.next_event()? {
            out.push(e);
        }
        Ok((out, r))
    }

    #[test]
    fn round_trip() {
        let evs = sample(10);
        let bytes = recording(&evs);
        // 10 events, two snapshots of 5 records (socket, 2 counters, sysctl, end), an owner in
        // 2 records, the trailer.
        assert_eq!(bytes.len(), HEADER_SIZE + 23 * RAW_EVENT_SIZE);
        let (got, r) = read_all(&bytes).unwrap();
        assert_eq!(got, evs);
        assert_eq!(r.header.start_ns, 900);
        assert_eq!(r.header.wall_offset_ns, -5);
        assert_eq!(r.header.passive_method, PassiveMethod::Srtt);
        assert_eq!(
            r.trailer(),
            Some(Trailer {
                end_ns: 5_000,
                lost: 7,
                undecodable: 1
            })
        );
    }

    #[test]
    fn damage_is_reported_with_its_offset() {
        let bytes = recording(&sample(3));
        let e = read_all(&bytes[..HEADER_SIZE + 100])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("offset 160") && e.contains("inside a record"),
            "{e}"
        );
        let e = read_all(&bytes[..HEADER_SIZE + 2 * RAW_EVENT_SIZE])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("offset 256") && e.contains("no trailer"), "{e}");
        let mut bad = bytes.clone();
        bad[HEADER_SIZE + RAW_EVENT_SIZE + 93] = 77; // kind byte of the second record
        let e = format!("{:#}", read_all(&bad).err().unwrap());
        assert!(e.contains("corrupt record at offset 160"), "{e}");
        let e = read_all(b"hello").err().unwrap().to_string();
        assert!(e.contains("not a tcptrace recording"), "{e}");
        let e = read_all(&bytes[..20]).err().unwrap().to_string();
        assert!(e.contains("truncated header"), "{e}");
        let mut v2 = bytes.clone();
        v2[8] = 2;
        let e = read_all(&v2).err().unwrap().to_string();
        assert!(e.contains("version 2"), "{e}");
        // Every truncation point gives an error, never a panic.
        for cut in 0..bytes.len() {
            assert!(read_all(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
