//! [`ScratchQuota`]: how much a job's scratch directory may hold, and the measurement that
//! enforces it.
//!
//! WASI preview 1 as wasmtime-wasi implements it writes through host file descriptors that the
//! VVM cannot see, so the quota is enforced by measuring: a job granted a scratch directory
//! gets an epoch callback that runs every epoch tick while the guest computes, and measures
//! the directory (its own thread, so the guest is stopped meanwhile: the measurement is
//! exact); once more when the entry returns, traps or exits. Over the quota, the job ends as
//! [`crate::Status::ScratchQuota`].
//!
//! What counts: every file, directory and link under the scratch directory, each as the larger
//! of its length and the disk blocks it holds, and at least [`ENTRY_BYTES`] (so that a million
//! empty files cost what a million blocks would). A guest can overshoot by what it writes
//! within one tick plus one write call (at most its linear memory); the final measurement
//! fails the job even then. A measurement stops as soon as the quota is passed, so it visits
//! at most `quota / ENTRY_BYTES` entries; and to bound its cost the next one comes no sooner
//! than [`BACKOFF`] times the duration of the last after it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The least one entry (file, directory, link) counts for: one filesystem block.
pub(crate) const ENTRY_BYTES: u64 = 4096;

/// A measurement that took `t` is followed by the next one no sooner than `BACKOFF * t` later,
/// so that measuring costs at most a tenth of the job's time.
const BACKOFF: u32 = 10;

/// The error that ends a job whose scratch directory holds more than its quota; reported as
/// [`crate::Status::ScratchQuota`].
#[derive(Debug)]
pub(crate) struct ScratchQuotaExceeded {
    pub(crate) quota: u64,
}

impl std::fmt::Display for ScratchQuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "scratch quota of {} bytes exceeded", self.quota)
    }
}

impl std::error::Error for ScratchQuotaExceeded {}

/// The quota of one job's scratch directory.
#[derive(Debug)]
pub(crate) struct ScratchQuota {
    dir: PathBuf,
    quota: u64,
    /// No periodic measurement before this instant (see [`BACKOFF`]).
    next: Instant,
}

impl ScratchQuota {
    pub(crate) fn new(dir: PathBuf, quota: u64) -> Self {
        Self {
            dir,
            quota,
            next: Instant::now(),
        }
    }

    /// The periodic check, from the epoch callback: measures unless the last measurement was
    /// too recent for its cost.
    pub(crate) fn poll(&mut self, now: Instant) -> Result<(), ScratchQuotaExceeded> {
        if now < self.next {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.check();
        let took = started.elapsed();
        self.next = Instant::now() + took * BACKOFF;
        result
    }

    /// Measures the directory now.
    pub(crate) fn check(&self) -> Result<(), ScratchQuotaExceeded> {
        if usage_over(&self.dir, self.quota) {
            Err(ScratchQuotaExceeded { quota: self.quota })
        } else {
            Ok(())
        }
    }
}

/// What one entry counts for.
fn charge(meta: &fs::Metadata) -> u64 {
    meta.len()
        .max(meta.blocks().saturating_mul(512))
        .max(ENTRY_BYTES)
}

/// Whether the entries under `dir` add up to more than `quota` bytes; stops counting as soon
/// as they do. Links are counted, not followed. Entries that vanish or cannot be read while
/// counting are skipped (the guest is stopped, so only the host could be removing them).
pub(crate) fn usage_over(dir: &Path, quota: u64) -> bool {
    usage_up_to(dir, quota) > quota
}

/// The usage of `dir`, counted until it passes `limit` (then some value above `limit`).
pub(crate) fn usage_up_to(dir: &Path, limit: u64) -> u64 {
    let mut used: u64 = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            used = used.saturating_add(charge(&meta));
            if used > limit {
                return used;
            }
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{ENTRY_BYTES, ScratchQuota, usage_over, usage_up_to};

    #[test]
    fn files_count_by_size_and_every_entry_by_at_least_a_block() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("big"), vec![1u8; 100_000]).expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/empty"), b"").expect("write");
        let used = usage_up_to(dir.path(), u64::MAX);
        // 100 000 bytes (or the blocks holding them), the directory, the empty file.
        assert!(used >= 100_000 + 2 * ENTRY_BYTES, "{used}");
        assert!(used < 100_000 + 8 * ENTRY_BYTES + 4 * ENTRY_BYTES, "{used}");
        assert!(!usage_over(dir.path(), used));
        assert!(usage_over(dir.path(), used - 1));
    }

    #[test]
    fn sparse_files_count_by_length() {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = std::fs::File::create(dir.path().join("sparse")).expect("create");
        f.set_len(1 << 30).expect("extend");
        assert!(usage_over(dir.path(), 1 << 29));
    }

    #[test]
    fn an_empty_directory_is_within_any_quota() {
        let dir = tempfile::tempdir().expect("temp dir");
        let quota = ScratchQuota::new(dir.path().to_owned(), 0);
        assert!(quota.check().is_ok());
    }

    #[test]
    fn the_error_names_the_quota() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("f"), b"x").expect("write");
        let quota = ScratchQuota::new(dir.path().to_owned(), 100);
        let e = quota.check().expect_err("over");
        assert_eq!(e.to_string(), "scratch quota of 100 bytes exceeded");
    }

    #[test]
    fn counting_stops_once_past_the_limit() {
        let dir = tempfile::tempdir().expect("temp dir");
        for i in 0..50 {
            std::fs::write(dir.path().join(i.to_string()), b"").expect("write");
        }
        let used = usage_up_to(dir.path(), 3 * ENTRY_BYTES);
        assert_eq!(used, 4 * ENTRY_BYTES);
    }

    #[test]
    fn periodic_checks_back_off_by_their_cost() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut quota = ScratchQuota::new(dir.path().to_owned(), 0);
        let now = Instant::now();
        assert!(quota.poll(now).is_ok());
        // The directory now holds too much, but the check that just ran sets when the next may.
        std::fs::write(dir.path().join("f"), b"x").expect("write");
        let next = quota.next;
        assert!(next >= now);
        assert!(quota.poll(next - Duration::from_nanos(1)).is_ok());
        assert!(quota.poll(next).is_err());
    }
}
