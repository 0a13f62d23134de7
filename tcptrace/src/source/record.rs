//! Recordings: the raw event stream saved to a file (`--record`) and read back (`replay`).
//!
//! Format, version 1 (all integers little-endian):
//! - a 64-byte header: magic `TCPTRACE` (8 bytes), version u32 = 1, record size u32 = 96,
//!   start u64 (kernel CLOCK_MONOTONIC ns when tracing started), wall-clock offset i64
//!   (CLOCK_REALTIME - CLOCK_MONOTONIC, ns), passive-handshake method u8 (0 sock_ops, 1 srtt),
//!   zeros to 64 bytes;
//! - records of 96 bytes, the kernel's own `RawEvent` layout (see tcptrace-common);
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

use anyhow::{Context as _, bail};
use tcptrace_common::{RAW_EVENT_SIZE, RawEvent};

use crate::{aggregate::PassiveMethod, event::Event, output};

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
}

impl Replay<BufReader<File>> {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Replay::new(BufReader::with_capacity(1 << 20, f), &path.display().to_string())
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
        })
    }

    /// The next event; `Ok(None)` after the trailer.
    pub fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
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
                bail!("{}: data after the trailer at offset {}", self.name, self.offset);
            }
            return Ok(None);
        }
        Event::try_from(&raw)
            .map(Some)
            .with_context(|| format!("{}: corrupt record at offset {at}", self.name))
    }

    pub fn trailer(&self) -> Option<Trailer> {
        self.trailer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Comm, EventKind, TcpState};

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
        assert_eq!(bytes.len(), HEADER_SIZE + 11 * RAW_EVENT_SIZE);
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
        let e = read_all(&bytes[..HEADER_SIZE + 100]).err().unwrap().to_string();
        assert!(e.contains("offset 160") && e.contains("inside a record"), "{e}");
        let e = read_all(&bytes[..HEADER_SIZE + 2 * RAW_EVENT_SIZE]).err().unwrap().to_string();
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
