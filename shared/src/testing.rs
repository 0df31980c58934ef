//! Scratch directories for tests, removed when the test process exits.
//!
//! Tests leave databases behind (one writes 500 MB to watch its WAL start over), and a test
//! binary has no hook of its own at exit. So each process keeps its directories under one root,
//! `<temp dir>/causeflow-test-<pid>`, which an `atexit` handler removes, whether the tests passed
//! or not. A process that never gets to exit (killed, or aborted) leaves its root behind; the
//! next test process to start removes it once no process has that id.
//!
//! `CAUSEFLOW_KEEP_TEST_DIRS=1` keeps every directory, for a look after a failure; the failing
//! test's panic names nothing on disk, so look in the newest root.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const PREFIX: &str = "causeflow-test-";

/// Set: the directories are kept.
const KEEP: &str = "CAUSEFLOW_KEEP_TEST_DIRS";

/// This process's root, once made.
static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// A fresh, empty directory, removed when this process exits.
pub fn tempdir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = root().join(N.fetch_add(1, Ordering::Relaxed).to_string());
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    d
}

fn root() -> &'static Path {
    ROOT.get_or_init(|| {
        let base = std::env::temp_dir();
        let keep = std::env::var_os(KEEP).is_some();
        if !keep {
            remove_orphans(&base);
        }
        let root = base.join(format!("{PREFIX}{}", std::process::id()));
        // Left by a process that had this id before: no live process owns it.
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        if !keep {
            // SAFETY: registers a plain function that takes and returns nothing, as atexit
            // requires; it only reads a OnceLock that is set by now and removes files.
            unsafe { libc::atexit(remove_root) };
        }
        root
    })
}

extern "C" fn remove_root() {
    if let Some(root) = ROOT.get() {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Removes the roots of test processes that no longer run.
fn remove_orphans(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if pid > 0 && !running(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether a process with this id exists (signal 0 checks without sending anything; EPERM
/// means it exists but belongs to someone else).
fn running(pid: libc::pid_t) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks the process exists.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_fresh_and_under_this_processes_root() {
        let (a, b) = (tempdir(), tempdir());
        assert_ne!(a, b);
        for d in [&a, &b] {
            assert!(d.is_dir());
            assert_eq!(std::fs::read_dir(d).unwrap().count(), 0);
            assert_eq!(d.parent(), ROOT.get().map(PathBuf::as_path));
        }
        let root = a.parent().unwrap().file_name().unwrap().to_str().unwrap();
        assert_eq!(root, format!("{PREFIX}{}", std::process::id()));
    }

    /// What a test process leaves once it exits: nothing, or with `CAUSEFLOW_KEEP_TEST_DIRS`
    /// set, everything. This test runs itself again as that process (this test binary, with
    /// only this test), which makes a directory with a file in it and prints its path.
    #[test]
    fn a_process_removes_its_directories_when_it_exits() {
        const CHILD: &str = "CAUSEFLOW_TESTING_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let d = tempdir();
            std::fs::write(d.join("f"), b"x").unwrap();
            println!("dir={}", d.display());
            return;
        }
        let run = |keep: bool| -> PathBuf {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap());
            child
                .args([
                    "--exact",
                    "testing::tests::a_process_removes_its_directories_when_it_exits",
                    "--nocapture",
                ])
                .env(CHILD, "1")
                .env_remove(KEEP);
            if keep {
                child.env(KEEP, "1");
            }
            let out = child.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{stdout}");
            let dir = stdout.lines().find_map(|l| l.strip_prefix("dir="));
            PathBuf::from(dir.unwrap_or_else(|| panic!("no directory printed: {stdout}")))
        };
        let gone = run(false);
        assert!(!gone.exists(), "{} is left", gone.display());
        assert!(!gone.parent().unwrap().exists(), "its root is left");
        let kept = run(true);
        assert!(kept.join("f").exists(), "{} was not kept", kept.display());
        let _ = std::fs::remove_dir_all(kept.parent().unwrap());
    }

    /// A root whose process is gone is removed; one whose process runs (this one), or a name
    /// that is not a root, is left.
    #[test]
    fn roots_of_processes_that_are_gone_are_removed() {
        let base = tempdir();
        // A process that has exited and been waited for: its id is free.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let orphan = base.join(format!("{PREFIX}{gone}"));
        let live = base.join(format!("{PREFIX}{}", std::process::id()));
        let other = base.join(format!("{PREFIX}not-a-pid"));
        for d in [&orphan, &live, &other] {
            std::fs::create_dir_all(d.join("inner")).unwrap();
        }
        // (Another process could be given the id meanwhile; then the orphan stays, rightly.)
        if !running(gone as libc::pid_t) {
            remove_orphans(&base);
            assert!(!orphan.exists());
        }
        assert!(live.exists());
        assert!(other.exists());
    }
}
