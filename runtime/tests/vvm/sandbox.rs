use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use voike_runtime::{Capabilities, JobSpec, Limits, Runtime, RuntimeConfig, Status};

use crate::*;

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut limits = Limits::default();
    f(&mut limits);
    limits
}

#[test]
fn infinite_loop_ends_at_its_wall_time_limit() {
    let rt = runtime();
    let module = compile(&rt, FOREVER);
    let wall = Duration::from_millis(300);
    let job = JobSpec {
        limits: limits(|l| {
            l.wall_time = wall;
            l.fuel = u64::MAX;
        }),
        ..JobSpec::call("run", &[])
    };
    let started = Instant::now();
    let outcome = rt.run(&module, &job);
    let took = started.elapsed();
    assert_eq!(outcome.status, Status::Timeout);
    assert!(took >= wall, "stopped early, after {took:?}");
    assert!(took < wall + SLACK, "stopped late, after {took:?}");
}

#[test]
fn infinite_loop_with_a_small_fuel_budget_runs_out_of_fuel() {
    let rt = runtime();
    let module = compile(&rt, FOREVER);
    let job = JobSpec {
        limits: limits(|l| l.fuel = 1_000_000),
        ..JobSpec::call("run", &[])
    };
    let outcome = rt.run(&module, &job);
    assert_eq!(outcome.status, Status::OutOfFuel);
    assert_eq!(outcome.fuel_used, 1_000_000);
}

/// xorshift64 as `examples/cpu.wat` computes it.
fn spin_ref(iterations: u64) -> i64 {
    let mut x: u64 = 88172645463325252;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x as i64
}

#[test]
fn spin_with_little_fuel_runs_out_and_reports_the_fuel_used() {
    let rt = runtime();
    let module = compile(&rt, CPU);
    let job = JobSpec {
        limits: limits(|l| l.fuel = 50_000),
        ..JobSpec::call("spin", &["100000000"])
    };
    let outcome = rt.run(&module, &job);
    assert_eq!(outcome.status, Status::OutOfFuel);
    assert_eq!(outcome.fuel_used, 50_000);
    assert!(outcome.returns.is_empty());
}

#[test]
fn spin_with_enough_fuel_returns_the_expected_value_and_its_fuel() {
    let rt = runtime();
    let module = compile(&rt, CPU);
    let outcome = call(&rt, &module, "spin", &["100000"]);
    assert_ok(&outcome);
    assert_eq!(outcome.returns, vec![spin_ref(100_000)]);
    // About a dozen instructions per iteration.
    assert!(
        (100_000..10_000_000).contains(&outcome.fuel_used),
        "fuel used: {}",
        outcome.fuel_used
    );
    // Twice the work costs about twice the fuel.
    let double = call(&rt, &module, "spin", &["200000"]);
    assert!(double.fuel_used > outcome.fuel_used * 19 / 10);
}

#[test]
fn memory_grow_past_the_limit_returns_minus_one_inside_the_guest() {
    let rt = runtime();
    let module = compile(&rt, MEMHOG);
    // 1 MiB = 16 pages; the module starts with 1.
    let one_mib = limits(|l| l.memory_bytes = 1 << 20);
    let job = |entry: &str, args: &[&str]| JobSpec {
        limits: one_mib,
        ..JobSpec::call(entry, args)
    };

    let outcome = rt.run(&module, &job("grow", &["100"]));
    assert_ok(&outcome);
    assert_eq!(outcome.returns, vec![-1], "memory.grow past the limit");

    let outcome = rt.run(&module, &job("grow_each", &["1000"]));
    assert_ok(&outcome);
    assert_eq!(
        outcome.returns,
        vec![15],
        "pages gained one at a time up to 16"
    );

    let outcome = rt.run(&module, &job("grow", &["15"]));
    assert_ok(&outcome);
    assert_eq!(
        outcome.returns,
        vec![1],
        "growing to exactly the limit succeeds"
    );
}

#[test]
fn memory_limit_is_clamped_to_the_node_ceiling() {
    let rt = runtime_with(RuntimeConfig {
        max_memory_bytes: 2 << 20,
        ..small()
    });
    let module = compile(&rt, MEMHOG);
    let job = JobSpec {
        limits: limits(|l| l.memory_bytes = u64::MAX),
        ..JobSpec::call("grow_each", &["1000"])
    };
    let outcome = rt.run(&module, &job);
    assert_ok(&outcome);
    assert_eq!(
        outcome.returns,
        vec![31],
        "2 MiB = 32 pages, one to start with"
    );
}

#[test]
fn initial_memory_above_the_job_limit_ends_as_memory_limit() {
    let rt = runtime();
    // 32 pages = 2 MiB of initial memory.
    let module = compile(&rt, r#"(module (memory 32) (func (export "run")))"#);
    let job = JobSpec {
        limits: limits(|l| l.memory_bytes = 1 << 20),
        ..JobSpec::call("run", &[])
    };
    assert_eq!(rt.run(&module, &job).status, Status::MemoryLimit);
    // The same module within its limit runs.
    assert_ok(&call(&rt, &module, "run", &[]));
}

#[test]
fn opening_a_file_without_the_capability_fails_and_creates_nothing() {
    let rt = runtime();
    let module = compile(&rt, OPENFILE);
    let cwd = std::env::current_dir().expect("cwd");
    let outcome = rt.run(&module, &JobSpec::command(&[]));
    // EBADF: there is no fd 3, no preopened directory at all.
    assert_eq!(outcome.status, Status::Exit(8));
    assert_eq!(outcome.exit_code, Some(8));
    assert!(!cwd.join("created-by-guest.txt").exists());
}

#[test]
fn scratch_dir_capability_lets_the_guest_create_a_file_there() {
    let rt = runtime();
    let module = compile(&rt, OPENFILE);
    let dir = tempfile::tempdir().expect("temp dir");
    let job = JobSpec {
        caps: Capabilities {
            scratch_dir: Some(dir.path().to_owned()),
            ..Capabilities::default()
        },
        ..JobSpec::command(&[])
    };
    let outcome = rt.run(&module, &job);
    assert_ok(&outcome);
    assert_eq!(outcome.exit_code, Some(0));
    let written =
        std::fs::read_to_string(dir.path().join("created-by-guest.txt")).expect("file created");
    assert_eq!(written, "written by a VVM guest\n");
}

#[test]
fn missing_scratch_dir_is_a_host_error_not_a_guest_failure() {
    let rt = runtime();
    let module = compile(&rt, OPENFILE);
    let job = JobSpec {
        caps: Capabilities {
            scratch_dir: Some("/nonexistent/voike-scratch".into()),
            ..Capabilities::default()
        },
        ..JobSpec::command(&[])
    };
    match rt.run(&module, &job).status {
        Status::HostError(message) => assert!(message.contains("/nonexistent/voike-scratch")),
        other => panic!("expected a host error, got {other:?}"),
    }
}

#[test]
fn deep_recursion_traps_with_call_stack_exhausted() {
    let rt = runtime();
    let module = compile(&rt, RECURSE);
    match call(&rt, &module, "run", &[]).status {
        Status::Trap(message) => {
            assert!(message.contains("call stack exhausted"), "{message}");
            assert!(message.contains("down"), "names the function: {message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn unreachable_traps_with_its_message() {
    let rt = runtime();
    let module = compile(&rt, r#"(module (func (export "boom") unreachable))"#);
    match call(&rt, &module, "boom", &[]).status {
        Status::Trap(message) => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn a_trapping_start_function_ends_the_job_as_a_trap() {
    let rt = runtime();
    let module = compile(
        &rt,
        r#"(module (func $s unreachable) (start $s) (func (export "run")))"#,
    );
    assert!(matches!(
        call(&rt, &module, "run", &[]).status,
        Status::Trap(_)
    ));
}

#[test]
fn hello_prints_to_the_captured_stdout() {
    let rt = runtime();
    let module = compile(&rt, HELLO);
    let outcome = rt.run(&module, &JobSpec::command(&[]));
    assert_ok(&outcome);
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(outcome.stdout, b"hello from the VVM\n");
    assert!(!outcome.stdout_truncated);
    assert!(outcome.stderr.is_empty());
}

#[test]
fn output_past_the_limit_is_truncated_and_the_job_still_succeeds() {
    let rt = runtime();
    let module = compile(&rt, HELLO);
    let job = JobSpec {
        limits: limits(|l| l.max_output_bytes = 5),
        ..JobSpec::command(&[])
    };
    let outcome = rt.run(&module, &job);
    assert_ok(&outcome);
    assert_eq!(outcome.stdout, b"hello");
    assert!(outcome.stdout_truncated);
}

/// Copies stdin to stdout (one read of up to 1 KiB).
const ECHO: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 1024))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

#[test]
fn stdin_is_what_the_job_gives() {
    let rt = runtime();
    let module = compile(&rt, ECHO);
    let job = JobSpec {
        stdin: b"from the job spec".to_vec(),
        ..JobSpec::command(&[])
    };
    let outcome = rt.run(&module, &job);
    assert_ok(&outcome);
    assert_eq!(outcome.stdout, b"from the job spec");
}

/// `now(clock_id) -> i64`: clock_time_get, or -errno.
const CLOCK: &str = r#"
(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "now") (param $id i32) (result i64)
    (local $errno i32)
    (local.set $errno (call $clock_time_get (local.get $id) (i64.const 1) (i32.const 0)))
    (if (result i64) (local.get $errno)
      (then (i64.sub (i64.const 0) (i64.extend_i32_u (local.get $errno))))
      (else (i64.load (i32.const 0))))))
"#;

#[test]
fn clocks_are_frozen_at_zero_without_the_capability() {
    let rt = runtime();
    let module = compile(&rt, CLOCK);
    for id in ["0", "1"] {
        let first = call(&rt, &module, "now", &[id]);
        assert_ok(&first);
        assert_eq!(first.returns, vec![0], "clock {id}");
    }
    // The CPU-time clocks are not available at all (EBADF).
    assert_eq!(call(&rt, &module, "now", &["2"]).returns, vec![-8]);
}

#[test]
fn clock_capability_gives_the_real_time() {
    let rt = runtime();
    let module = compile(&rt, CLOCK);
    let job = |id: &str| JobSpec {
        caps: Capabilities {
            clock: true,
            ..Capabilities::default()
        },
        ..JobSpec::call("now", &[id])
    };
    let wall = rt.run(&module, &job("0"));
    assert_ok(&wall);
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as i64;
    let guest_now = wall.returns[0];
    assert!(
        (host_now - guest_now).abs() < 60_000_000_000,
        "guest {guest_now}, host {host_now}"
    );
    let mono = rt.run(&module, &job("1"));
    assert!(
        mono.returns[0] > 0,
        "monotonic time advances from the job start"
    );
}

/// `count() -> i32`: how many environment variables the guest sees.
const ENV: &str = r#"
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "count") (result i32)
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (i32.load (i32.const 0))))
"#;

#[test]
fn environment_is_empty_unless_granted() {
    let rt = runtime();
    let module = compile(&rt, ENV);
    assert!(
        std::env::vars().count() > 0,
        "the test process has an environment"
    );
    assert_eq!(call(&rt, &module, "count", &[]).returns, vec![0]);
    let job = JobSpec {
        caps: Capabilities {
            env: vec![
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "2".to_owned()),
            ],
            ..Capabilities::default()
        },
        ..JobSpec::call("count", &[])
    };
    assert_eq!(rt.run(&module, &job).returns, vec![2]);
}

/// `sleep(ns: i64) -> i32`: poll_oneoff on one relative monotonic timer; returns the errno, or
/// 100 + nevents on success.
const SLEEP: &str = r#"
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "sleep") (param $ns i64) (result i32)
    (local $errno i32)
    (i64.store (i32.const 0) (i64.const 7))         ;; userdata
    (i32.store8 (i32.const 8) (i32.const 0))        ;; tag: clock
    (i32.store (i32.const 16) (i32.const 1))        ;; monotonic
    (i64.store (i32.const 24) (local.get $ns))      ;; timeout
    (i32.store16 (i32.const 40) (i32.const 0))      ;; relative
    (local.set $errno (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
    (if (result i32) (local.get $errno)
      (then (local.get $errno))
      (else (i32.add (i32.const 100) (i32.load (i32.const 128)))))))
"#;

#[test]
fn sleeping_past_the_deadline_ends_as_a_timeout() {
    let rt = runtime();
    let module = compile(&rt, SLEEP);
    let job = JobSpec {
        limits: limits(|l| l.wall_time = Duration::from_millis(200)),
        // One hour.
        ..JobSpec::call("sleep", &["3600000000000"])
    };
    let started = Instant::now();
    let outcome = rt.run(&module, &job);
    assert_eq!(outcome.status, Status::Timeout);
    assert!(started.elapsed() < SLACK);

    let short = call(&rt, &module, "sleep", &["1000000"]);
    assert_ok(&short);
    assert_eq!(short.returns, vec![101], "one event after a 1 ms sleep");
}

#[test]
fn bad_jobs_do_not_disturb_a_good_job_running_beside_them() {
    let rt = Arc::new(runtime());
    let forever = compile(&rt, FOREVER);
    let recurse = compile(&rt, RECURSE);
    let memhog = compile(&rt, MEMHOG);
    let fib = compile(&rt, FIB);

    let wall = Duration::from_secs(3);
    let looping = {
        let rt = Arc::clone(&rt);
        thread::spawn(move || {
            let job = JobSpec {
                limits: Limits {
                    wall_time: wall,
                    fuel: u64::MAX,
                    ..Limits::default()
                },
                ..JobSpec::call("run", &[])
            };
            let outcome = rt.run(&forever, &job);
            (outcome, Instant::now())
        })
    };
    let crashing = {
        let rt = Arc::clone(&rt);
        thread::spawn(move || {
            (0..20)
                .map(|_| rt.run(&recurse, &JobSpec::call("run", &[])).status)
                .collect::<Vec<_>>()
        })
    };
    let hogging = {
        let rt = Arc::clone(&rt);
        thread::spawn(move || {
            let job = JobSpec {
                limits: Limits {
                    memory_bytes: 8 << 20,
                    ..Limits::default()
                },
                ..JobSpec::call("grow_each", &["100000"])
            };
            (0..20)
                .map(|_| rt.run(&memhog, &job).returns)
                .collect::<Vec<_>>()
        })
    };

    let good = {
        let rt = Arc::clone(&rt);
        thread::spawn(move || {
            let outcome = rt.run(&fib, &JobSpec::call("fib_segment", &["0", "100000"]));
            (outcome, Instant::now())
        })
    };
    let (good, good_done) = good.join().expect("good job thread");
    assert_ok(&good);
    assert_eq!(good.returns, vec![segment_ref(0, 100_000) as i64]);

    let (looped, loop_done) = looping.join().expect("looping job thread");
    assert_eq!(looped.status, Status::Timeout);
    assert!(
        good_done < loop_done,
        "the good job finished while the loop was still running"
    );
    for status in crashing.join().expect("recursing job thread") {
        assert!(matches!(status, Status::Trap(_)), "{status:?}");
    }
    for returns in hogging.join().expect("memory hog thread") {
        assert_eq!(returns, vec![127], "8 MiB = 128 pages, one to start with");
    }
}

#[test]
fn the_runtime_keeps_working_after_every_kind_of_failure() {
    let rt: Runtime = runtime();
    let short = Limits {
        wall_time: Duration::from_millis(50),
        fuel: u64::MAX,
        ..Limits::default()
    };
    let failures = [
        (FOREVER, "run", short),
        (RECURSE, "run", Limits::default()),
        (
            CPU,
            "spin",
            Limits {
                fuel: 10,
                ..Limits::default()
            },
        ),
    ];
    for (wat, entry, limits) in failures {
        let module = compile(&rt, wat);
        let args: &[&str] = if entry == "spin" { &["1000"] } else { &[] };
        let outcome = rt.run(
            &module,
            &JobSpec {
                limits,
                ..JobSpec::call(entry, args)
            },
        );
        assert!(!outcome.status.is_ok(), "{entry}: {:?}", outcome.status);
    }
    let hello = compile(&rt, HELLO);
    let outcome = rt.run(&hello, &JobSpec::command(&[]));
    assert_ok(&outcome);
    assert_eq!(outcome.stdout, b"hello from the VVM\n");
}

#[test]
fn every_job_gets_fresh_memory() {
    let rt = runtime();
    // `bump` increments a counter in memory and returns it; a fresh instance always says 1.
    let module = compile(
        &rt,
        r#"(module (memory 1)
             (func (export "bump") (result i32)
               (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
               (i32.load (i32.const 0))))"#,
    );
    for _ in 0..5 {
        assert_eq!(call(&rt, &module, "bump", &[]).returns, vec![1]);
    }
}

#[test]
fn idle_instances_hold_pool_slots_until_dropped() {
    let rt = runtime_with(RuntimeConfig {
        max_instances: 4,
        ..RuntimeConfig::default()
    });
    let module = compile(&rt, HELLO);
    let mut idle: Vec<_> = (0..4)
        .map(|_| rt.instantiate_idle(&module).expect("a slot is free"))
        .collect();
    assert!(idle[0].has_entry("_start"));
    // The pool is full: a job cannot get an instance, and says so as a host error.
    match rt.run(&module, &JobSpec::command(&[])).status {
        Status::HostError(message) => assert!(message.contains("instance"), "{message}"),
        other => panic!("expected a host error, got {other:?}"),
    }
    assert!(rt.instantiate_idle(&module).is_err());
    idle.pop();
    assert_ok(&rt.run(&module, &JobSpec::command(&[])));
}

/// `write(chunks, size) -> errno`: creates `/scratch/big` and writes `chunks` chunks of `size`
/// bytes (at most 1 MiB) into it; `chunks = -1` writes (practically) forever.
const SCRATCH_WRITER: &str = r#"
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 17)
  (data (i32.const 64) "big")
  (func (export "write") (param $chunks i32) (param $size i32) (result i32)
    (local $errno i32) (local $fd i32)
    (local.set $errno (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 3)
      (i32.const 9) (i64.const 0x42) (i64.const 0x42) (i32.const 0) (i32.const 0)))
    (if (local.get $errno) (then (return (local.get $errno))))
    (local.set $fd (i32.load (i32.const 0)))
    (i32.store (i32.const 8) (i32.const 65536))
    (i32.store (i32.const 12) (local.get $size))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $chunks)))
        (local.set $errno (call $fd_write (local.get $fd) (i32.const 8) (i32.const 1) (i32.const 16)))
        (br_if $done (local.get $errno))
        (local.set $chunks (i32.sub (local.get $chunks) (i32.const 1)))
        (br $next)))
    (local.get $errno)))
"#;

fn scratch_job(dir: &std::path::Path, quota: u64, chunks: &str, size: &str) -> JobSpec {
    JobSpec {
        limits: limits(|l| {
            l.scratch_bytes = quota;
            l.wall_time = Duration::from_secs(60);
            l.fuel = u64::MAX;
        }),
        caps: Capabilities {
            scratch_dir: Some(dir.to_owned()),
            ..Capabilities::default()
        },
        ..JobSpec::call("write", &[chunks, size])
    }
}

#[test]
fn writing_within_the_scratch_quota_succeeds() {
    let rt = runtime();
    let module = compile(&rt, SCRATCH_WRITER);
    let dir = tempfile::tempdir().expect("temp dir");
    let outcome = rt.run(&module, &scratch_job(dir.path(), 1 << 20, "8", "65536"));
    assert_ok(&outcome);
    assert_eq!(outcome.returns, vec![0]);
    let len = std::fs::metadata(dir.path().join("big"))
        .expect("file")
        .len();
    assert_eq!(len, 8 * 65536);
}

#[test]
fn writing_forever_ends_at_the_scratch_quota() {
    let rt = runtime();
    let module = compile(&rt, SCRATCH_WRITER);
    let dir = tempfile::tempdir().expect("temp dir");
    let quota = 4 << 20;
    let outcome = rt.run(&module, &scratch_job(dir.path(), quota, "-1", "65536"));
    assert_eq!(outcome.status, Status::ScratchQuota(quota));
    assert_eq!(
        outcome.status.to_string(),
        "scratch quota of 4194304 bytes exceeded"
    );
    // Measured every tick: stopped long before the wall time, having written past the quota
    // by what fits in one tick at most.
    let len = std::fs::metadata(dir.path().join("big"))
        .expect("file")
        .len();
    assert!(len > quota, "{len}");
}

#[test]
fn one_write_past_the_quota_then_returning_still_fails_the_job() {
    let rt = runtime();
    let module = compile(&rt, SCRATCH_WRITER);
    let dir = tempfile::tempdir().expect("temp dir");
    // One 1 MiB write against a 64 KiB quota: over before any tick can see it.
    let outcome = rt.run(&module, &scratch_job(dir.path(), 65536, "1", "1048576"));
    assert_eq!(outcome.status, Status::ScratchQuota(65536));
}

#[test]
fn the_node_scratch_limit_caps_a_job_asking_for_more() {
    let rt = runtime_with(RuntimeConfig {
        max_scratch_bytes: 65536,
        ..small()
    });
    let module = compile(&rt, SCRATCH_WRITER);
    let dir = tempfile::tempdir().expect("temp dir");
    let outcome = rt.run(&module, &scratch_job(dir.path(), 1 << 30, "4", "65536"));
    assert_eq!(outcome.status, Status::ScratchQuota(65536));
}

#[test]
fn a_scratch_job_still_ends_at_its_wall_time() {
    let rt = runtime();
    let module = compile(&rt, SCRATCH_WRITER);
    let dir = tempfile::tempdir().expect("temp dir");
    // One-byte writes forever, far below the quota: the epoch callback ends it at its deadline.
    let mut job = scratch_job(dir.path(), 1 << 30, "-1", "1");
    job.limits.wall_time = Duration::from_millis(200);
    assert_eq!(rt.run(&module, &job).status, Status::Timeout);
}
