//! A `poll_oneoff` that respects the job's deadline.
//!
//! wasmtime-wasi's own `poll_oneoff` sleeps as long as the guest asks, on the host thread,
//! where epoch interruption cannot reach it: a guest asking to sleep for a year would hold a
//! worker for a year. This replacement, linked over it, sleeps at most until the job's
//! deadline and then ends the job as a timeout. File and stdio subscriptions are always ready
//! (stdin is in memory and files are regular files), so it reports them at once.
//!
//! Layouts (WASI preview 1, little-endian): a subscription is 48 bytes — `userdata: u64` at 0,
//! tag `u8` at 8 (0 clock, 1 fd_read, 2 fd_write), then for a clock `id: u32` at 16,
//! `timeout: u64` at 24, `precision: u64` at 32, `flags: u16` at 40 (bit 0: absolute). An event
//! is 32 bytes — `userdata: u64` at 0, `error: u16` at 8, `type: u8` at 10, `nbytes: u64` at
//! 16, `flags: u16` at 24.

use std::fmt;
use std::time::{Duration, Instant};

use wasmtime::{Caller, Extern, Linker};

use crate::sandbox::JobState;

const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;

const TAG_CLOCK: u8 = 0;
const TAG_FD_READ: u8 = 1;
const TAG_FD_WRITE: u8 = 2;

const CLOCK_REALTIME: u32 = 0;
const CLOCK_MONOTONIC: u32 = 1;

const SUBCLOCK_ABSTIME: u16 = 1;

/// The error that ends a job whose `poll_oneoff` reached the job's deadline; reported as
/// [`crate::Status::Timeout`].
#[derive(Debug)]
pub(crate) struct WallTimeExceeded;

impl fmt::Display for WallTimeExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the job slept past its wall-time limit")
    }
}

impl std::error::Error for WallTimeExceeded {}

/// Links the bounded `poll_oneoff` over wasmtime-wasi's.
pub(crate) fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "poll_oneoff",
        |mut caller: Caller<'_, JobState>,
         subs: i32,
         events: i32,
         count: i32,
         nevents_out: i32|
         -> wasmtime::Result<i32> {
            poll_oneoff(&mut caller, subs, events, count, nevents_out)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

struct Ready {
    userdata: u64,
    kind: u8,
    error: u16,
}

fn poll_oneoff(
    caller: &mut Caller<'_, JobState>,
    subs: i32,
    events: i32,
    count: i32,
    nevents_out: i32,
) -> wasmtime::Result<i32> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Ok(ERRNO_FAULT);
    };
    // WASI pointers and sizes are unsigned 32-bit values carried in i32s.
    let subs = subs as u32 as usize;
    let events = events as u32 as usize;
    let count = count as u32 as usize;
    let nevents_out = nevents_out as u32 as usize;
    if count == 0 {
        return Ok(ERRNO_INVAL);
    }

    let clock = caller.data().clock;
    let deadline = caller.data().deadline;
    let mut ready = Vec::new();
    // The clock subscriptions with the earliest timeout: (nanoseconds from now, userdata).
    let mut earliest: Option<u64> = None;
    let mut timers = Vec::new();
    for i in 0..count {
        let mut sub = [0u8; SUBSCRIPTION_SIZE];
        let Some(at) = i
            .checked_mul(SUBSCRIPTION_SIZE)
            .and_then(|o| o.checked_add(subs))
        else {
            return Ok(ERRNO_FAULT);
        };
        if memory.read(&*caller, at, &mut sub).is_err() {
            return Ok(ERRNO_FAULT);
        }
        let userdata = u64_at(&sub, 0);
        match sub[8] {
            TAG_CLOCK => {
                let id = u32::from_le_bytes([sub[16], sub[17], sub[18], sub[19]]);
                let timeout = u64_at(&sub, 24);
                let flags = u16::from_le_bytes([sub[40], sub[41]]);
                let now = match id {
                    CLOCK_REALTIME => clock.wall_nanos(),
                    CLOCK_MONOTONIC => clock.monotonic_nanos(),
                    _ => {
                        ready.push(Ready {
                            userdata,
                            kind: TAG_CLOCK,
                            error: ERRNO_INVAL as u16,
                        });
                        continue;
                    }
                };
                let wait = if flags & SUBCLOCK_ABSTIME != 0 {
                    timeout.saturating_sub(now)
                } else {
                    timeout
                };
                earliest = Some(earliest.map_or(wait, |e| e.min(wait)));
                timers.push((wait, userdata));
            }
            kind @ (TAG_FD_READ | TAG_FD_WRITE) => ready.push(Ready {
                userdata,
                kind,
                error: ERRNO_SUCCESS as u16,
            }),
            _ => return Ok(ERRNO_INVAL),
        }
    }

    if ready.is_empty() {
        // Only timers: sleep until the first one fires, but never past the deadline.
        let wait = Duration::from_nanos(earliest.unwrap_or(0));
        let left = deadline.saturating_duration_since(Instant::now());
        if wait >= left {
            std::thread::sleep(left);
            return Err(WallTimeExceeded.into());
        }
        std::thread::sleep(wait);
        let fired = earliest.unwrap_or(0);
        ready.extend(
            timers
                .iter()
                .filter(|(w, _)| *w <= fired)
                .map(|&(_, userdata)| Ready {
                    userdata,
                    kind: TAG_CLOCK,
                    error: ERRNO_SUCCESS as u16,
                }),
        );
    } else {
        // Timers that are already due fire along with the ready descriptors.
        ready.extend(
            timers
                .iter()
                .filter(|(w, _)| *w == 0)
                .map(|&(_, userdata)| Ready {
                    userdata,
                    kind: TAG_CLOCK,
                    error: ERRNO_SUCCESS as u16,
                }),
        );
    }

    for (i, event) in ready.iter().enumerate() {
        let mut bytes = [0u8; EVENT_SIZE];
        bytes[0..8].copy_from_slice(&event.userdata.to_le_bytes());
        bytes[8..10].copy_from_slice(&event.error.to_le_bytes());
        bytes[10] = event.kind;
        let Some(at) = i
            .checked_mul(EVENT_SIZE)
            .and_then(|o| o.checked_add(events))
        else {
            return Ok(ERRNO_FAULT);
        };
        if memory.write(&mut *caller, at, &bytes).is_err() {
            return Ok(ERRNO_FAULT);
        }
    }
    let written = u32::try_from(ready.len()).unwrap_or(u32::MAX);
    if memory
        .write(&mut *caller, nevents_out, &written.to_le_bytes())
        .is_err()
    {
        return Ok(ERRNO_FAULT);
    }
    Ok(ERRNO_SUCCESS)
}

fn u64_at(bytes: &[u8; SUBSCRIPTION_SIZE], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}
