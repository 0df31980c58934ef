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
use std::os::unix::fs::OpenOptionsExt;
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
    /// Maps the counter of the database at `db_path`, creating its file (readable by its owner
    /// only) if needed.
    pub fn open(db_path: &Path) -> std::io::Result<KeyEpoch> {
        let mut name = db_path.as_os_str().to_owned();
        name.push("-keys");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(name)?;
        // Another process may be doing the same: growing to the same size is harmless, and the
        // file never shrinks (a mapping past its end would fault).
        if file.metadata()?.len() < SIZE as u64 {
            file.set_len(SIZE as u64)?;
        }
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
        let a = KeyEpoch::open(&db).unwrap();
        let b = KeyEpoch::open(&db).unwrap();
        let start = a.current();
        b.bump();
        assert_eq!(a.current(), start + 1);
        a.bump();
        assert_eq!(b.current(), start + 2);
        drop(a);
        assert_eq!(KeyEpoch::open(&db).unwrap().current(), start + 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
