//! Files tcptrace writes: created without following symlinks, mode 0644 at most, and checked
//! before any probe is attached so a bad path fails early with nothing half-written.
use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// Creates (or truncates) `path` for writing, refusing to follow a symlink at `path`.
pub fn create(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// A file written all at once at exit: content goes to a temporary file beside the target,
/// which is renamed over it, so readers never see half a file. A target that is not a regular
/// file (/dev/null, a FIFO, a terminal) is opened now and written in place: renamed over, the
/// device would have been replaced by a regular file.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    /// The opened target, when it is not a regular file.
    device: Option<File>,
}

impl AtomicFile {
    /// Checks now that the target's directory is writable (by creating the temporary file), or
    /// opens the target if it is a device or a FIFO. A symlink is refused, as by [`create`].
    pub fn prepare(target: &Path) -> anyhow::Result<AtomicFile> {
        let name = target
            .file_name()
            .with_context(|| format!("{} is not a file path", target.display()))?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Ok(m) = std::fs::symlink_metadata(target) {
            if m.is_symlink() {
                anyhow::bail!(
                    "{} is a symlink: tcptrace does not follow symlinks for files it writes; give the path it points to",
                    target.display()
                );
            }
            if m.is_dir() {
                anyhow::bail!("{} is a directory", target.display());
            }
            if !m.is_file() {
                let device = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(target)
                    .with_context(|| format!("cannot write {}", target.display()))?;
                return Ok(AtomicFile {
                    target: target.to_path_buf(),
                    tmp: PathBuf::new(),
                    device: Some(device),
                });
            }
        }
        let tmp = dir.join(format!(
            ".{}.tmp.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", target.display()))?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            tmp,
            device: None,
        })
    }

    /// Hands the prepared temporary file to the user tcptrace is about to become (--user), so
    /// it can still write and rename it at exit.
    pub fn chown(&self, uid: u32, gid: u32) -> anyhow::Result<()> {
        if self.device.is_some() {
            // Already open: writable whoever tcptrace becomes.
            return Ok(());
        }
        std::os::unix::fs::lchown(&self.tmp, Some(uid), Some(gid))
            .with_context(|| format!("handing {} to uid {uid}", self.tmp.display()))
    }

    pub fn commit(mut self, content: &[u8]) -> anyhow::Result<()> {
        if let Some(mut device) = self.device.take() {
            return device
                .write_all(content)
                .with_context(|| format!("writing {}", self.target.display()));
        }
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&self.tmp)?;
            f.write_all(content)?;
            f.sync_all()?;
            std::fs::rename(&self.tmp, &self.target)
        };
        write().with_context(|| format!("writing {}", self.target.display()))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Not committed (or committed: then the temporary name no longer exists).
        // (A device target has no temporary name.)
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty directory of this test process's own.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tcptrace-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn atomic_file_replaces_whole() {
        let dir = scratch("out");
        let target = dir.join("s.json");
        std::fs::write(&target, b"old").unwrap();
        let f = AtomicFile::prepare(&target).unwrap();
        f.commit(b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // Dropped without commit: target untouched, no temporary left behind.
        let f = AtomicFile::prepare(&target).unwrap();
        drop(f);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert!(AtomicFile::prepare(&dir.join("nodir/x.json")).is_err());
        // A symlink is refused, whatever it points to.
        let link = dir.join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = AtomicFile::prepare(&link).unwrap_err();
        assert!(format!("{e:#}").contains("is a symlink"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_or_device_is_written_in_place_not_replaced() {
        use std::os::unix::fs::FileTypeExt as _;
        // Renamed over, `--json-summary /dev/null` made /dev/null a regular file. A FIFO (no
        // privileges needed, nothing shared) stands for any file that is not a regular one.
        let dir = scratch("fifo");
        let fifo = dir.join("summary.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let f = AtomicFile::prepare(&fifo).unwrap();
        f.commit(b"{}\n").unwrap();
        let m = std::fs::symlink_metadata(&fifo).unwrap();
        assert!(m.file_type().is_fifo(), "the FIFO is now {m:?}");
        assert_eq!(reader.join().unwrap(), b"{}\n");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "a temporary file was left beside it"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_refuses_symlinks() {
        let dir = scratch("sym");
        let link = dir.join("link");
        std::os::unix::fs::symlink(dir.join("elsewhere"), &link).unwrap();
        assert!(create(&link).is_err());
        assert!(!dir.join("elsewhere").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
