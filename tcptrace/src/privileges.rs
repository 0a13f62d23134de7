//! `--user NAME`: once the programs are attached and the output files are open, tcptrace keeps
//! only what it still needs. It switches to that user (groups, gid, uid) with no capabilities
//! left and no way to regain them (PR_SET_NO_NEW_PRIVS); the ring buffer and the other open
//! descriptors keep working.
//!
//! What needs privileges afterwards is lost and said so: sock_diag polls of other network
//! namespaces (setns needs CAP_SYS_ADMIN; tcptrace's own namespace still works) and the owners
//! of other users' sockets (/proc/PID/fd).
use std::ffi::CString;

use anyhow::{Context as _, anyhow, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

/// Looks a user up by name (or numeric uid) before anything is attached, so a typo fails early.
pub fn lookup(name: &str) -> anyhow::Result<Account> {
    let c = CString::new(name).map_err(|_| anyhow!("--user {name:?}: not a user name"))?;
    // SAFETY: getpwnam returns a pointer into static storage or NULL; read it at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if !pw.is_null() {
        // SAFETY: non-null result of getpwnam.
        let pw = unsafe { &*pw };
        return Ok(Account {
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        });
    }
    if let Ok(uid) = name.parse::<u32>() {
        return Ok(Account { uid, gid: uid });
    }
    bail!("--user {name}: no such user (give a name from /etc/passwd or a numeric uid)")
}

/// Switches to `acct` for good: supplementary groups cleared, gid then uid, all capabilities
/// gone (a root -> non-root setuid clears them), no new privileges through exec.
/// Files written at exit (the JSON summary's rename, the histogram log's `.hgrm`) are created
/// after the drop, so their directory must let `acct` create and rename files there. Checked
/// before anything is attached, from the directory's owner, group and mode bits.
pub fn check_dir_writable(acct: Account, name: &str, file: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let m = std::fs::metadata(&dir).with_context(|| format!("reading {}", dir.display()))?;
    let mode = m.mode();
    let ok = (m.uid() == acct.uid && mode & 0o300 == 0o300)
        || (m.gid() == acct.gid && mode & 0o030 == 0o030)
        || mode & 0o003 == 0o003;
    if !ok {
        bail!(
            "--user {name}: {} is not writable by that user, and files are written there at exit: pick a directory it can write (or chown it)",
            dir.display()
        );
    }
    Ok(())
}

pub fn drop_to(acct: Account) -> anyhow::Result<()> {
    // SAFETY: plain syscalls; glibc applies the credential changes to every thread.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error()).context("setgroups");
        }
        if libc::setresgid(acct.gid, acct.gid, acct.gid) != 0 {
            return Err(std::io::Error::last_os_error()).context("setresgid");
        }
        if libc::setresuid(acct.uid, acct.uid, acct.uid) != 0 {
            return Err(std::io::Error::last_os_error()).context("setresuid");
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error()).context("PR_SET_NO_NEW_PRIVS");
        }
    }
    // Dropping to a non-root uid clears the permitted and effective sets; make sure of it (and
    // of the ambient and inheritable sets) rather than trust it.
    for set in [
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
        caps::CapSet::Inheritable,
        caps::CapSet::Ambient,
    ] {
        caps::clear(None, set).map_err(|e| anyhow!("clearing capabilities: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_users_up() {
        assert_eq!(lookup("root").unwrap(), Account { uid: 0, gid: 0 });
        assert_eq!(lookup("4242").unwrap().uid, 4242);
        let e = lookup("no-such-user-here").unwrap_err().to_string();
        assert!(e.contains("no such user"), "{e}");
    }
}
