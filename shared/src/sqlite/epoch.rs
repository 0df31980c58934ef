//! A counter of API key changes shared by every process that opens one database: eight bytes in
//! a file beside it (`<db>-keys`), mapped into memory. Changing a key (revoke, rotate, retire,
//! Sentry secret) adds one after the change commits; `serve` reads it before using a key it
//! cached ([`super::SqliteDirectory`]), so a key changed by `causeflow keys …` from another process
//! takes effect on the next request, without a database read per request.
//!
//! Why not the database: any read of it is a read transaction (file locks, the WAL index, pages
//! the writer has changed), which for the key lookup was about 8% of the CPU per alert. A load of
//! shared memory costs nothing.
//!
//! Only the counter's changes matter, never its value, and a process that starts reads the
//! database for every key first: so it needs no durability, and losing the file loses nothing.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The mapped counter.
pub struct KeyEpoch {
    counter: *const AtomicU64,
    /// Kept open for as long as the mapping lives.
    _file: File,
}

// SAFETY: the mapping is shared memory accessed only through the atomic, valid until `drop`.
unsafe impl Send for KeyEpoch {}
unsafe impl Sync for KeyEpoch {}

const SIZE: usize = std::mem::size_of::<AtomicU64>();

impl KeyEpoch {
    /// Maps the counter of the database at `db_path` (which exists), creating its file
    /// (readable by its owner only) if needed.
    pub fn open(db_path: &Path) -> std::io::Result<KeyEpoch> {
        // The database's real name, as SQLite resolves it: two processes naming one database
        // through different links must share one counter.
        let mut name = std::fs::canonicalize(db_path)?.into_os_string();
        name.push("-keys");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(name)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        // One left readable by others is tightened, as the database's own files are; failing
        // that (another user's file), it is not used.
        if meta.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        // Sized without touching what is there (another process may be doing the same, and
        // may already count), and the file never shrinks: a mapping past its end would fault.
        // Its block allocated now, where the file system can: a hole would be allocated at the
        // first count, and on a full disk that faults the process.
        if meta.len() < SIZE as u64 {
            file.set_len(SIZE as u64)?;
        }
        // SAFETY: plain system call on an open descriptor; mode 0 allocates, keeps the data.
        unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, SIZE as libc::off_t) };
        // SAFETY: a shared mapping of the file's first bytes, which exist (above); the kernel
        // aligns it to a page, so to the atomic's alignment.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(KeyEpoch {
            counter: p.cast::<AtomicU64>(),
            _file: file,
        })
    }

    /// The counter now.
    pub fn current(&self) -> u64 {
        // SAFETY: mapped until drop. SeqCst: a change's commit, then its count, are seen in
        // that order by every process.
        unsafe { (*self.counter).load(Ordering::SeqCst) }
    }

    /// Counts a change, once it has committed.
    pub fn bump(&self) {
        // SAFETY: as in `current`.
        unsafe { (*self.counter).fetch_add(1, Ordering::SeqCst) };
    }
}

impl Drop for KeyEpoch {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, of `SIZE` bytes, no longer referenced.
        unsafe { libc::munmap(self.counter as *mut libc::c_void, SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two mappings of one database's counter (as two processes have) see each other's counts.
    #[test]
    fn two_openers_share_one_counter() {
        let dir = super::super::tests::tempdir();
        let db = dir.join("c.db");
        std::fs::write(&db, b"").unwrap();
        let a = KeyEpoch::open(&db).unwrap();
        let b = KeyEpoch::open(&db).unwrap();
        let start = a.current();
        b.bump();
        assert_eq!(a.current(), start + 1);
        a.bump();
        assert_eq!(b.current(), start + 2);
        drop(a);
        assert_eq!(KeyEpoch::open(&db).unwrap().current(), start + 2);
    }

    /// One database named through a link shares the counter of its real name (SQLite resolves
    /// the link too), and a counter file that is itself a link is not followed.
    #[test]
    fn links_resolve_to_one_counter_and_a_linked_counter_is_refused() {
        let dir = super::super::tests::tempdir();
        let db = dir.join("c.db");
        std::fs::write(&db, b"").unwrap();
        let link = dir.join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        let real = KeyEpoch::open(&db).unwrap();
        let linked = KeyEpoch::open(&link).unwrap();
        let start = real.current();
        linked.bump();
        assert_eq!(real.current(), start + 1);
        assert!(!dir.join("link.db-keys").exists());

        let other = dir.join("other.db");
        std::fs::write(&other, b"").unwrap();
        let target = dir.join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("other.db-keys")).unwrap();
        assert!(KeyEpoch::open(&other).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"");

        // One left readable by others is tightened to its owner, as the database's files are.
        let loose = dir.join("loose.db");
        std::fs::write(&loose, b"").unwrap();
        let counter = dir.join("loose.db-keys");
        std::fs::write(&counter, b"").unwrap();
        std::fs::set_permissions(&counter, std::fs::Permissions::from_mode(0o644)).unwrap();
        KeyEpoch::open(&loose).unwrap();
        let mode = std::fs::metadata(&counter).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
