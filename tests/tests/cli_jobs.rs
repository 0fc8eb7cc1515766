//! The `voike job` commands against a real daemon: WebAssembly modules from `examples/` uploaded
//! and run as grid jobs with `voike job submit`, followed with `--wait`, and read back with
//! `voike job list`, `show` and `logs`; a split job's combined result checked against a
//! reference computed here.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use voike_protocol::jobs::{JobState, JobView};
use voike_tests::{TestNode, voike, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

/// `--timeout` of `job submit --wait`, so that a stuck job fails the test instead of hanging it.
const WAIT_SECS: &str = "60";

/// The modulus of `examples/fib.wat`.
const P: u64 = 1_000_000_007;

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .display()
        .to_string()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Runs `voike args` and requires success; returns stdout.
fn ok(node: &TestNode, args: &[&str]) -> anyhow::Result<String> {
    let out = voike(node, args)?;
    anyhow::ensure!(
        out.status.success(),
        "voike {args:?} failed ({}):\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    Ok(stdout(&out))
}

/// Runs `voike args` and requires exit status 1 with a one-line `Error: ` message; returns it.
fn fails(node: &TestNode, args: &[&str]) -> anyhow::Result<(String, String)> {
    let out = voike(node, args)?;
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "voike {args:?}:\n{}{err}",
        stdout(&out)
    );
    let last = err.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("Error: "), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("Error")).count(),
        1,
        "{err}"
    );
    Ok((stdout(&out), last))
}

/// `value` of the `key   value` line of `job show`'s output.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim())
    })
}

/// The rows of `job show`'s segment table, split into cells (ARGS spans two cells when the job
/// has a range).
fn segment_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip_while(|l| !l.starts_with("SEG "))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

fn show_json(node: &TestNode, id: &str) -> anyhow::Result<JobView> {
    let text = ok(node, &["job", "show", id, "--json"])?;
    let body: Value = serde_json::from_str(&text)?;
    Ok(serde_json::from_value(body["job"].clone())?)
}

/// What `fib_segment(start, end)` of `examples/fib.wat` returns: (F(start) + ... + F(end-1)) mod
/// P, with F(0) = 0, F(1) = 1 and every term taken mod P.
fn fib_segment(fib: &[u64], start: u64, end: u64) -> u64 {
    (start..end).fold(0, |sum, i| (sum + fib[i as usize]) % P)
}

/// The combined result of a job running `fib_segment` over [0, range) cut into `split` segments:
/// the sum of the segments' results (segment `s` covers `range*s/split .. range*(s+1)/split`).
fn fib_reference(range: u64, split: u64) -> i64 {
    let mut fib = vec![0u64, 1];
    while fib.len() < range as usize + 2 {
        let n = fib.len();
        fib.push((fib[n - 1] + fib[n - 2]) % P);
    }
    let total: u64 = (0..split)
        .map(|s| fib_segment(&fib, range * s / split, range * (s + 1) / split))
        .sum();
    // The module's own check: the sum over [0, n) is F(n+1) - 1.
    assert_eq!(total % P, (fib[range as usize + 1] + P - 1) % P);
    total as i64
}

#[test]
fn a_fib_job_split_six_ways_combines_to_the_reference_sum() -> anyhow::Result<()> {
    let node = TestNode::spawn("cli-jobs-fib", &[])?;
    let fib = example("fib.wat");
    let out = voike(
        &node,
        &[
            "job",
            "submit",
            "--split",
            "6",
            &fib,
            "--n",
            "10000",
            "--wait",
            "--timeout",
            WAIT_SECS,
        ],
    )?;
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{}\n{text}{err}", out.status);
    assert!(err.contains("entry fib_segment"), "{err}");
    assert!(err.contains("segments done 6/6"), "{err}");
    assert_eq!(field(&text, "state"), Some("done"), "{text}");
    assert_eq!(field(&text, "entry"), Some("fib_segment"), "{text}");

    let rows = segment_rows(&text);
    assert_eq!(rows.len(), 6, "{text}");
    for (s, row) in rows.iter().enumerate() {
        let (start, end) = (10_000 * s / 6, 10_000 * (s + 1) / 6);
        let expect = [s.to_string(), start.to_string(), end.to_string()];
        assert_eq!(row[..3], expect, "{text}");
        assert_eq!(row[3], "done", "{text}");
        assert_eq!(row[5], "ok", "{text}");
        assert_eq!(row.last().map(String::as_str), Some("verified"), "{text}");
    }
    let reference = fib_reference(10_000, 6);
    assert_eq!(
        field(&text, "combined"),
        Some(reference.to_string().as_str()),
        "{text}"
    );
    assert_eq!(field(&text, "result"), Some("ok"), "{text}");
    assert_eq!(field(&text, "mismatch"), Some("no"), "{text}");

    let id = field(&text, "job").unwrap_or_default().to_string();
    let view = show_json(&node, &id)?;
    assert_eq!(view.state, JobState::Done);
    assert_eq!(view.job.spec.entry, "fib_segment");
    assert_eq!(view.segments.len(), 6);
    for s in &view.segments {
        assert_eq!(s.results.len(), 1, "segment {}", s.index);
        assert!(s.results[0].verify().is_ok(), "segment {}", s.index);
    }
    let result = view.result.expect("a done job has a gathered result");
    assert!(result.ok);
    assert_eq!(result.combined, reference);
    assert_eq!(result.runners, vec![node.node_id.clone(); 6]);
    Ok(())
}

#[test]
fn a_hello_job_prints_to_its_logs_and_is_listed_with_a_fib_job() -> anyhow::Result<()> {
    let node = TestNode::spawn("cli-jobs-hello", &[])?;

    // Without --wait: the id alone on stdout.
    let fib_id = ok(
        &node,
        &["job", "submit", &example("fib.wat"), "--arg", "10"],
    )?
    .trim()
    .to_string();
    assert!(
        fib_id.len() == 24 && fib_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fib_id:?}"
    );

    let text = ok(
        &node,
        &[
            "job",
            "submit",
            &example("hello.wat"),
            "--wait",
            "--timeout",
            WAIT_SECS,
        ],
    )?;
    assert_eq!(field(&text, "state"), Some("done"), "{text}");
    assert!(text.contains("stdout:\nhello from the VVM\n"), "{text}");
    let hello_id = field(&text, "job").unwrap_or_default().to_string();

    let logs = ok(&node, &["job", "logs", &hello_id])?;
    let header = format!(
        "== segment 0 (runner {}, status ok) ==",
        &node.node_id[node.node_id.len() - 8..]
    );
    assert_eq!(logs, format!("{header}\nhello from the VVM\n"));

    wait_for(DEADLINE, "the fib job to finish", || {
        Ok(show_json(&node, &fib_id)?.state == JobState::Done)
    })?;
    let logs = ok(&node, &["job", "logs", &fib_id, "--segment", "0"])?;
    assert!(logs.ends_with("status ok) ==\n55\n"), "{logs}");
    let (_, err) = fails(&node, &["job", "logs", &fib_id, "--segment", "1"])?;
    assert!(err.contains("no segment 1"), "{err}");

    let list = ok(&node, &["job", "list"])?;
    let columns: Vec<&str> = list
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        columns,
        [
            "ID",
            "STATE",
            "SPLIT",
            "DONE",
            "MODULE",
            "ENTRY",
            "SUBMITTED_BY",
            "AGE"
        ],
        "{list}"
    );
    for id in [&fib_id, &hello_id] {
        let row: Vec<&str> = list
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("job {id} not listed:\n{list}"))
            .split_whitespace()
            .collect();
        assert_eq!(
            (row[1], row[2], row[3], row[5]),
            ("done", "1", "1", "_start")
        );
    }
    let failed = ok(&node, &["job", "list", "--state", "failed"])?;
    assert_eq!(failed.lines().count(), 1, "only the header:\n{failed}");
    let listed: Value = serde_json::from_str(&ok(&node, &["job", "list", "--json"])?)?;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(2), "{listed}");
    Ok(())
}

#[test]
fn a_file_that_is_not_a_module_is_refused_in_one_line() -> anyhow::Result<()> {
    let node = TestNode::spawn("cli-jobs-bad", &[])?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("noise.wasm");
    // xorshift bytes: neither a wasm header nor UTF-8 text.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..512)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8 | 0x80
        })
        .collect();
    std::fs::write(&path, noise)?;
    let file = path.display().to_string();

    let (_, err) = fails(&node, &["job", "submit", &file, "--wait"])?;
    assert!(err.contains("module") && err.contains(&file), "{err}");
    assert!(err.contains("invalid_module"), "{err}");

    let (_, err) = fails(&node, &["job", "show", "nope"])?;
    assert!(err.contains("no job nope"), "{err}");
    let list = ok(&node, &["job", "list"])?;
    assert_eq!(list.lines().count(), 1, "nothing was submitted:\n{list}");
    Ok(())
}

#[test]
fn a_job_past_its_wall_time_fails_and_shows_timeout() -> anyhow::Result<()> {
    let node = TestNode::spawn("cli-jobs-forever", &[])?;
    let (text, err) = fails(
        &node,
        &[
            "job",
            "submit",
            &example("forever.wat"),
            "--entry",
            "run",
            "--wall-ms",
            "500",
            "--wait",
            "--timeout",
            WAIT_SECS,
        ],
    )?;
    assert!(err.contains("failed") && err.contains("timeout"), "{err}");
    let id = field(&text, "job").unwrap_or_default().to_string();

    let shown = ok(&node, &["job", "show", &id])?;
    assert_eq!(field(&shown, "state"), Some("failed"), "{shown}");
    assert_eq!(field(&shown, "result"), Some("not ok"), "{shown}");
    let rows = segment_rows(&shown);
    assert_eq!(rows.len(), 1, "{shown}");
    // SEG ARGS STATE RUNNER STATUS RETURNS FUEL DURATION_MS SIGNATURE
    let runner = &node.node_id[node.node_id.len() - 8..];
    assert_eq!(
        rows[0][..5],
        ["0", "-", "failed", runner, "timeout"],
        "{shown}"
    );
    assert_eq!(rows[0].last().map(String::as_str), Some("verified"));
    Ok(())
}
