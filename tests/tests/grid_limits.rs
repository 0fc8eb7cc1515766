//! One member cannot exhaust the others, on real `voiked` processes: a module too complex to
//! compile cheaply is refused before compiling with the limit it breaks, and the node goes on
//! running jobs; a job writing past its scratch quota fails with the quota and leaves no
//! directory behind; a second submitter's job starts before the first submitter's backlog is
//! done.

use std::time::Duration;

use serde_json::{Value, json};
use voike_tests::grid_util::{
    first_result, get_job, job_finished, result_stdout, submit_job, upload_module, upload_ok,
};
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(120);

/// The default `grid.scratch_quota_bytes`.
const SCRATCH_QUOTA: u64 = 64 << 20;

fn example(name: &str) -> anyhow::Result<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    Ok(std::fs::read(&path)?)
}

/// Runs `fib(20)` on `node` and checks the answer: the node still runs jobs.
fn probe(node: &TestNode) -> anyhow::Result<()> {
    let fib = upload_ok(node, &example("fib.wat")?)?;
    let id = submit_job(
        node,
        &json!({ "module": fib, "entry": "fib", "args": ["20"] }),
    )?;
    let j = job_finished(node, &id, DEADLINE)?;
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(first_result(&j, 0)["returns"], json!([6765]), "{j}");
    Ok(())
}

fn error_message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn over_complex_modules_are_refused_before_compiling_and_the_node_runs_on() -> anyhow::Result<()> {
    let node = TestNode::spawn("gridlim-compile", &[])?;

    // One function past the default max_functions (10 000).
    let many = format!("(module {})", "(func)".repeat(10_001));
    let r = upload_module(&node, many.as_bytes())?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "module_over_limit", "{}", r.body);
    let message = error_message(&r.body);
    assert!(
        message.contains("10001 functions") && message.contains("max_functions = 10000"),
        "{message}"
    );

    // Blocks nested 20 000 deep in one function: refused at depth 513 (max_nesting_depth).
    let deep = format!(
        "(module (func {}{}))",
        "(block ".repeat(20_000),
        ")".repeat(20_000)
    );
    let r = upload_module(&node, deep.as_bytes())?;
    assert_eq!(r.status, 400, "{}", r.body);
    let message = error_message(&r.body);
    assert!(
        message.contains("513 deep") && message.contains("max_nesting_depth = 512"),
        "{message}"
    );

    // 20 000 locals in one function (max_locals 10 000), as a binary module.
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    wasm.extend([1, 4, 1, 0x60, 0, 0]); // types: () -> ()
    wasm.extend([3, 2, 1, 0]); // one function of type 0
    let body = [1, 0xa0, 0x9c, 0x01, 0x7f, 0x0b]; // 20 000 i32 locals, end
    wasm.extend([10, body.len() as u8 + 2, 1, body.len() as u8]);
    wasm.extend(body);
    let r = upload_module(&node, &wasm)?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        error_message(&r.body).contains("20000 locals; the limit is max_locals = 10000"),
        "{}",
        r.body
    );

    // Nothing was stored under a refused module, and the node goes on compiling and running.
    let r = node.post(
        "/grid/jobs",
        &json!({ "module": voike_runtime::module_hash(many.as_bytes()) }),
    )?;
    assert_eq!(r.status, 400, "{}", r.body);
    probe(&node)?;
    assert_eq!(node.get("/healthz")?.status, 200);
    Ok(())
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

/// What `<data-dir>/scratch` holds (missing counts as empty).
fn scratch_entries(node: &TestNode) -> Vec<String> {
    std::fs::read_dir(node.dir.join("scratch"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_job_writing_past_its_scratch_quota_fails_with_it_and_leaves_no_directory() -> anyhow::Result<()>
{
    let node = TestNode::spawn("gridlim-scratch", &[])?;
    let writer = upload_ok(&node, SCRATCH_WRITER.as_bytes())?;
    let job = |chunks: &str| {
        json!({ "module": writer, "entry": "write", "args": [chunks, "1048576"],
                "capabilities": { "scratch": true },
                "limits": { "wallMs": 120_000, "fuel": 1_000_000_000_000u64 } })
    };

    // Within the quota: 8 MiB.
    let small = submit_job(&node, &job("8"))?;
    let j = job_finished(&node, &small, DEADLINE)?;
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(first_result(&j, 0)["returns"], json!([0]), "{j}");

    // 1 MiB writes forever: ended at the quota, long before its wall time.
    let hog = submit_job(&node, &job("-1"))?;
    let j = job_finished(&node, &hog, DEADLINE)?;
    assert_eq!(j["state"], "failed", "{j}");
    let r = first_result(&j, 0);
    assert_eq!(r["status"], "scratch_quota", "{j}");
    assert_eq!(
        result_stdout(&r),
        format!("scratch quota of {SCRATCH_QUOTA} bytes exceeded"),
        "{j}"
    );

    // Both directories are gone once their results are in.
    for id in [&small, &hog] {
        assert!(
            !node.dir.join("scratch").join(format!("{id}-0")).exists(),
            "scratch directory of {id} removed: {:?}",
            scratch_entries(&node)
        );
    }
    assert!(
        scratch_entries(&node).is_empty(),
        "{:?}",
        scratch_entries(&node)
    );
    // Nothing else on the node is affected.
    probe(&node)?;
    Ok(())
}

/// Short Hypermesh timings; `runner` only on the node that runs the jobs.
fn spawn(name: &str, extra: &[&str], caps: &str) -> anyhow::Result<TestNode> {
    let env = [
        ("VOIKED_HYPERMESH__HEARTBEAT_INTERVAL", "300ms"),
        ("VOIKED_HYPERMESH__SAMPLE_FAST", "200ms"),
        ("VOIKED_HYPERMESH__SAMPLE_SLOW", "2s"),
        ("VOIKED_HYPERMESH__CAPABILITIES", caps),
        ("VOIKED_GRID__LEASE", "2s"),
        // One segment at a time: what decides the order is who goes next.
        ("VOIKED_GRID__MAX_PARALLEL", "1"),
    ];
    let mut node = TestNode::create(name, extra)?;
    node.set_env(&env);
    node.start()?;
    Ok(node)
}

fn finished_ms(job: &Value) -> u64 {
    first_result(job, 0)["finishedMs"].as_u64().unwrap_or(0)
}

#[test]
fn a_second_submitters_job_runs_before_the_first_submitters_backlog_is_done() -> anyhow::Result<()>
{
    // X submits on A, Y on B; only A runs jobs ("runner"), one at a time.
    let a = spawn("gridfair-a", &[], "runner")?;
    let b = spawn("gridfair-b", &["--join", &a.invite("10m")?], "")?;
    wait_for(DEADLINE, "b connected", || a.sees_connected(&b.node_id))?;
    let cpu = example("cpu.wat")?;
    let on_a = upload_ok(&a, &cpu)?;
    let on_b = upload_ok(&b, &cpu)?;
    assert_eq!(on_a, on_b);
    let spin = |iterations: &str| {
        json!({ "module": on_a, "entry": "spin", "args": [iterations],
                "requirements": { "capabilities": ["runner"] },
                "limits": { "fuel": 1_000_000_000_000u64, "wallMs": 600_000 } })
    };

    // X's backlog: four long jobs, queued before Y's arrives.
    let mut backlog = Vec::new();
    for _ in 0..4 {
        backlog.push(submit_job(&a, &spin("1000000000"))?);
    }
    wait_for(DEADLINE, "A runs X's first job", || {
        let j = get_job(&a, &backlog[0])?;
        Ok(j["state"] == "running" || j["state"] == "done")
    })?;
    let y = submit_job(&b, &spin("1000"))?;
    wait_for(DEADLINE, "A sees Y's job", || {
        Ok(a.get(&format!("/grid/jobs/{y}"))?.status == 200)
    })?;

    let y_job = job_finished(&a, &y, DEADLINE)?;
    assert_eq!(y_job["state"], "done", "{y_job}");
    let mut xs = Vec::new();
    for id in &backlog {
        let j = job_finished(&a, id, DEADLINE)?;
        assert_eq!(j["state"], "done", "{j}");
        assert_eq!(first_result(&j, 0)["runner"], a.node_id.as_str());
        xs.push(finished_ms(&j));
    }
    assert_eq!(first_result(&y_job, 0)["runner"], a.node_id.as_str());
    // All on A's clock: Y's job ended while X still had jobs waiting.
    let y_done = finished_ms(&y_job);
    let x_after_y = xs.iter().filter(|&&x| x > y_done).count();
    assert!(
        x_after_y >= 2,
        "Y's job finished at {y_done}, X's at {xs:?}: at least two of X's four ran after it"
    );
    Ok(())
}
