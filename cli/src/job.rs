//! `voike job`: grid jobs. `submit` uploads a module (`POST /vvm/modules`), submits the job
//! (`POST /grid/jobs`) and with `--wait` polls `GET /grid/jobs/{id}` until it ends; `list`,
//! `show` and `logs` read `GET /grid/jobs`; `cancel` is `POST /grid/jobs/{id}/cancel`. Results are shown with their runner's signature
//! checked ([`SegmentResult::verify`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use voike_protocol::jobs::{
    Capabilities, JobInput, JobState, JobView, Limits, MAX_INPUT_BYTES, Requirements,
    SegmentResult, SegmentView,
};
use voike_protocol::sync::MAX_MODULE_BYTES;

use crate::{Client, JobCmd, SubmitArgs, now_ms, or_dash, print_json, short, table, url_part};

/// How often `submit --wait` asks for the job.
const POLL: Duration = Duration::from_millis(200);

/// How long an upload may take: the daemon compiles the module before it answers.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Entries that are never a segment function.
const NOT_SEGMENT_ENTRIES: [&str; 2] = ["_start", "_initialize"];

/// What `POST /vvm/modules` answers.
#[derive(Debug, Deserialize)]
struct ModuleInfo {
    hash: String,
    size: u64,
    entries: Vec<String>,
    wasi: bool,
}

#[derive(Debug, Deserialize)]
struct ModuleBody {
    module: ModuleInfo,
}

#[derive(Debug, Deserialize)]
struct JobBody {
    /// `null` if the daemon cannot show the job it just accepted.
    job: Option<JobView>,
}

#[derive(Debug, Deserialize)]
struct JobsBody {
    jobs: Vec<JobView>,
    /// The cursor of the next page (`GET ...&after=NEXT`), absent on the last one.
    #[serde(default)]
    next: Option<String>,
}

/// `NAME=VALUE` of `--env`.
pub(crate) fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

pub(crate) fn job(client: &Client, cmd: &JobCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        JobCmd::Submit(args) => submit(client, args, json),
        JobCmd::List { state } => {
            let path = match state {
                Some(s) => format!("/grid/jobs?state={}", url_part(s)),
                None => "/grid/jobs".to_string(),
            };
            let (mut raw, mut r): (_, JobsBody) = fetch(client, &path, None)?;
            // Every page (the answer is paged by job id).
            let sep = if path.contains('?') { '&' } else { '?' };
            while let Some(next) = r.next.take() {
                let page = format!("{path}{sep}after={}", url_part(&next));
                let (more_raw, more): (serde_json::Value, JobsBody) = fetch(client, &page, None)?;
                if let (Some(all), Some(extra)) = (
                    raw.get_mut("jobs").and_then(|v| v.as_array_mut()),
                    more_raw.get("jobs").and_then(|v| v.as_array()),
                ) {
                    all.extend(extra.iter().cloned());
                }
                r.jobs.extend(more.jobs);
                r.next = more.next;
            }
            if let Some(obj) = raw.as_object_mut() {
                obj.remove("next");
            }
            if json {
                return print_json(&raw);
            }
            r.jobs.sort_by(|a, b| {
                (a.job.submitted_ms, &a.job.id).cmp(&(b.job.submitted_ms, &b.job.id))
            });
            let now = now_ms();
            let rows: Vec<Vec<String>> = r
                .jobs
                .iter()
                .map(|j| {
                    vec![
                        j.job.id.clone(),
                        state_name(j.state).to_string(),
                        j.job.spec.split.to_string(),
                        count(j, JobState::Done).to_string(),
                        short_hash(&j.job.spec.module),
                        j.job.spec.entry.clone(),
                        short(&j.job.submitted_by),
                        age(now.saturating_sub(j.job.submitted_ms)),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "STATE",
                    "SPLIT",
                    "DONE",
                    "MODULE",
                    "ENTRY",
                    "SUBMITTED_BY",
                    "AGE",
                ],
                &rows,
            );
            Ok(())
        }
        JobCmd::Show { id } => {
            let (raw, view) = get_job(client, id)?;
            if json {
                print_json(&raw)?;
            } else {
                show(&view);
            }
            check_signatures(&view)
        }
        JobCmd::Cancel { id } => {
            let path = format!("/grid/jobs/{}/cancel", url_part(id));
            let text = client.send("POST", &path, None::<&()>)?;
            let raw: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow!("{path}: unexpected response: {e}"))?;
            if json {
                return print_json(&raw);
            }
            let view: JobBody = serde_json::from_value(raw)
                .map_err(|e| anyhow!("{path}: unexpected response: {e}"))?;
            let view = view
                .job
                .with_context(|| format!("{path}: the daemon answered without the job"))?;
            match &view.cancelled {
                Some(c) => println!("job {id} cancelled ({})", cancel_text(c)),
                None => println!("job {id}: state {}", state_name(view.state)),
            }
            Ok(())
        }
        JobCmd::Logs { id, segment } => {
            let (_, view) = get_job(client, id)?;
            logs(&view, *segment, json)
        }
    }
}

/// `GET path`, or `POST path` with `body`: the answer as sent (for `--json`) and as `T`.
fn fetch<T: DeserializeOwned>(
    client: &Client,
    path: &str,
    body: Option<&JobInput>,
) -> anyhow::Result<(serde_json::Value, T)> {
    let text = match body {
        Some(b) => client.send("POST", path, Some(b))?,
        None => client.send("GET", path, None::<&()>)?,
    };
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{path}: unexpected response: {e}"))?;
    let typed = serde_json::from_value(raw.clone())
        .map_err(|e| anyhow!("{path}: unexpected response: {e}"))?;
    Ok((raw, typed))
}

fn get_job(client: &Client, id: &str) -> anyhow::Result<(serde_json::Value, JobView)> {
    let path = format!("/grid/jobs/{}", url_part(id));
    let (raw, body): (_, JobBody) = fetch(client, &path, None)?;
    let view = body
        .job
        .with_context(|| format!("{path}: the daemon answered without the job"))?;
    Ok((raw, view))
}

fn submit(client: &Client, a: &SubmitArgs, json: bool) -> anyhow::Result<()> {
    let file = a.file.display();
    let bytes = std::fs::read(&a.file).with_context(|| format!("cannot read module {file}"))?;
    if bytes.len() > MAX_MODULE_BYTES {
        bail!(
            "module {file} is {} bytes; the limit is {MAX_MODULE_BYTES} (4 MiB)",
            bytes.len()
        );
    }
    let input = match &a.stdin {
        Some(path) => {
            let data = std::fs::read(path)
                .with_context(|| format!("cannot read --stdin {}", path.display()))?;
            if data.len() > MAX_INPUT_BYTES {
                bail!(
                    "--stdin {} is {} bytes; the limit is {MAX_INPUT_BYTES}",
                    path.display(),
                    data.len()
                );
            }
            BASE64.encode(data)
        }
        None => String::new(),
    };
    let text = client
        .upload("/vvm/modules", &bytes, UPLOAD_TIMEOUT)
        .with_context(|| format!("module {file} was not accepted"))?;
    let module = serde_json::from_str::<ModuleBody>(&text)
        .map_err(|e| anyhow!("/vvm/modules: unexpected response: {e}"))?
        .module;
    eprintln!(
        "module {} ({} bytes{}): exports {}",
        module.hash,
        module.size,
        if module.wasi { ", WASI" } else { "" },
        or_dash(&module.entries.join(", "))
    );
    let entry = match &a.entry {
        Some(e) => {
            if !module.entries.contains(e) {
                bail!(
                    "module {file} exports no function {e} (it exports: {})",
                    or_dash(&module.entries.join(", "))
                );
            }
            eprintln!("entry {e}");
            e.clone()
        }
        None => {
            let (e, why) = default_entry(&module.entries, a.split, a.range);
            match why {
                Some(why) => eprintln!("entry {e} ({why}; choose another with --entry)"),
                None => eprintln!("entry {e}"),
            }
            e
        }
    };
    let defaults = Limits::default();
    let job = JobInput {
        module: module.hash.clone(),
        entry,
        args: a.args.clone(),
        input,
        limits: Limits {
            memory_bytes: a.memory.unwrap_or(defaults.memory_bytes),
            fuel: a.fuel.unwrap_or(defaults.fuel),
            wall_ms: a.wall_ms.unwrap_or(defaults.wall_ms),
            max_output_bytes: a.max_output.unwrap_or(defaults.max_output_bytes),
        },
        capabilities: Capabilities {
            clock: a.clock,
            env: a.env.iter().cloned().collect::<BTreeMap<_, _>>(),
            scratch: a.scratch,
        },
        requirements: Requirements {
            region: a.region.clone().unwrap_or_default(),
            capabilities: a.caps.clone(),
        },
        replicas: a.replicas,
        split: a.split,
        range: a.range,
    };
    let (raw, body): (_, JobBody) = fetch(client, "/grid/jobs", Some(&job))?;
    let view = body
        .job
        .context("/grid/jobs: the daemon accepted the job but answered without it")?;
    let id = view.job.id.clone();
    if !a.wait {
        if json {
            return print_json(&raw);
        }
        // The id alone on stdout, so that `ID=$(voike job submit ...)` works.
        println!("{id}");
        eprintln!(
            "submitted job {id}: {} segment{} of {}",
            view.job.spec.split,
            if view.job.spec.split == 1 { "" } else { "s" },
            view.job.spec.entry
        );
        return Ok(());
    }
    eprintln!("submitted job {id}, waiting (up to {}s)", a.timeout);
    let (raw, view, settled) = wait(client, &id, Duration::from_secs(a.timeout))?;
    if json {
        print_json(&raw)?;
    } else {
        show(&view);
    }
    if !settled {
        bail!(
            "job {id} did not finish within {}s (state {}, segments done {}/{})",
            a.timeout,
            state_name(view.state),
            count(&view, JobState::Done),
            view.segments.len()
        );
    }
    check_signatures(&view)?;
    if let Some(c) = &view.cancelled {
        bail!("job {id} was cancelled ({})", cancel_text(c));
    }
    match (&view.state, &view.result) {
        (JobState::Done, Some(r)) if r.ok => Ok(()),
        (JobState::Done, _) => bail!("job {id} ended without success: {}", failures(&view)),
        _ => bail!("job {id} failed: {}", failures(&view)),
    }
}

/// The entry to call when `--entry` is not given, and why when it is not `_start`: for a job cut
/// into segments of a range (`split > 1`, `range > 0`), the module's only `*_segment` function,
/// else its only function besides `_start`; and a module without `_start` that exports one
/// function gets that one.
fn default_entry(entries: &[String], split: u32, range: u64) -> (String, Option<String>) {
    let others: Vec<&String> = entries
        .iter()
        .filter(|e| !NOT_SEGMENT_ENTRIES.contains(&e.as_str()))
        .collect();
    if split > 1 && range > 0 {
        let segment: Vec<&&String> = others
            .iter()
            .filter(|e| e.ends_with("_segment") || e.as_str() == "segment")
            .collect();
        if let [only] = segment.as_slice() {
            return (
                only.to_string(),
                Some(format!(
                    "the module's only *_segment function, as the range is cut in {split}"
                )),
            );
        }
        if let [only] = others.as_slice() {
            return (
                only.to_string(),
                Some(format!(
                    "the module's only function besides _start, as the range is cut in {split}"
                )),
            );
        }
    }
    if !entries.iter().any(|e| e == "_start")
        && let [only] = others.as_slice()
    {
        return (
            only.to_string(),
            Some("the module's only function; it has no _start".into()),
        );
    }
    ("_start".into(), None)
}

/// Polls the job until it has ended with no run still holding a lease, or `timeout` passes;
/// prints a progress line on stderr whenever the counts change. The flag says whether it ended.
fn wait(
    client: &Client,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<(serde_json::Value, JobView, bool)> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    let mut said: Option<String> = None;
    loop {
        let (raw, view) = get_job(client, id)?;
        // Said once (again only when the reason changes); the job may still get a node.
        if let Some(why) = &view.waiting
            && said.as_ref() != Some(why)
        {
            eprintln!("waiting: {why}; the job stays pending until such a node is live");
            said = Some(why.clone());
        }
        let progress = (
            count(&view, JobState::Done),
            count(&view, JobState::Running),
            count(&view, JobState::Failed),
        );
        if last != Some(progress) {
            let (done, running, failed) = progress;
            let mut line = format!(
                "segments done {done}/{} (running {running}",
                view.segments.len()
            );
            if failed > 0 {
                line.push_str(&format!(", failed {failed}"));
            }
            eprintln!("{line})");
            last = Some(progress);
        }
        let ended = matches!(
            view.state,
            JobState::Done | JobState::Failed | JobState::Cancelled
        );
        // Replicas may still be running after the first result of every segment is in.
        let leased = view
            .segments
            .iter()
            .flat_map(|s| &s.claims)
            .any(|c| c.lease_until_ms > now_ms());
        if ended && !leased {
            return Ok((raw, view, true));
        }
        if Instant::now() >= deadline {
            return Ok((raw, view, false));
        }
        std::thread::sleep(POLL);
    }
}

fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Pending => "pending",
        JobState::Running => "running",
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

/// `by <node>, <reason>, 12s ago`.
fn cancel_text(c: &voike_protocol::jobs::Cancel) -> String {
    let mut out = format!("by {}", c.by);
    if !c.reason.is_empty() {
        out.push_str(&format!(", {}", c.reason));
    }
    out.push_str(&format!(", {} ago", age(now_ms().saturating_sub(c.at_ms))));
    out
}

fn count(view: &JobView, state: JobState) -> usize {
    view.segments.iter().filter(|s| s.state == state).count()
}

/// The first 12 hex characters of a module hash.
fn short_hash(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// `12s`, `5m`, `3h`, `2d`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Arguments as a shell would need them: quoted when empty or holding spaces or quotes.
fn show_args(args: &[String]) -> String {
    if args.is_empty() {
        return "-".into();
    }
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"\\".contains(c)) {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a result ended: `ok`, `exit 2`, `timeout`, ...; for the statuses whose output is the
/// runner's reason (`module_unavailable`, `scratch_quota`), with that reason.
fn outcome(r: &SegmentResult) -> String {
    match r.exit_code {
        Some(code) if r.status == "exit" => format!("exit {code}"),
        _ if r.status == "module_unavailable" || r.status == "scratch_quota" => {
            match reason(r).as_str() {
                "" => r.status.clone(),
                reason => format!("{} ({reason})", r.status),
            }
        }
        _ => r.status.clone(),
    }
}

/// Why a run did not succeed, in the runner's words (the missing argument, the trap, the host
/// error); empty when it succeeded or says nothing more than its status. Results signed before
/// reasons existed carry the reason of `module_unavailable` and `scratch_quota` in their output.
fn reason(r: &SegmentResult) -> String {
    if r.succeeded() || r.status == "exit" {
        return String::new();
    }
    if !r.reason.trim().is_empty() {
        return r.reason.trim().to_string();
    }
    if r.status == "module_unavailable" || r.status == "scratch_quota" {
        let out = r.stdout_bytes().unwrap_or_default();
        return String::from_utf8_lossy(&out).trim().to_string();
    }
    String::new()
}

/// `trap (trapped: unreachable)`: the status with its reason, for failure lines.
fn outcome_and_reason(r: &SegmentResult) -> String {
    let head = match r.exit_code {
        Some(code) if r.status == "exit" => format!("exit {code}"),
        _ => r.status.clone(),
    };
    match reason(r).as_str() {
        "" => head,
        why => format!("{head} ({why})"),
    }
}

/// Why a job did not succeed: the first result of each segment that did not, at most three.
fn failures(view: &JobView) -> String {
    let mut why: Vec<String> = view
        .segments
        .iter()
        .filter_map(|s| match s.results.first() {
            Some(r) if !r.succeeded() => {
                Some(format!("segment {} {}", s.index, outcome_and_reason(r)))
            }
            _ => None,
        })
        .collect();
    if why.len() > 3 {
        let more = why.len() - 3;
        why.truncate(3);
        why.push(format!("{more} more"));
    }
    if why.is_empty() {
        "no segment reports a failure".into()
    } else {
        why.join(", ")
    }
}

/// Fails when a result's signature does not verify.
fn check_signatures(view: &JobView) -> anyhow::Result<()> {
    for s in &view.segments {
        for r in &s.results {
            r.verify().map_err(|e| {
                anyhow!(
                    "job {}: the result of segment {} by {} does not verify: {e}",
                    view.job.id,
                    s.index,
                    r.runner
                )
            })?;
        }
    }
    Ok(())
}

fn kv(key: &str, value: impl std::fmt::Display) {
    println!("{key:<10} {value}");
}

/// `job show`: the header, a row per result (or per segment without one), the gathered result.
fn show(view: &JobView) {
    let job = &view.job;
    let spec = &job.spec;
    kv("job", &job.id);
    kv("state", state_name(view.state));
    kv("module", &spec.module);
    kv("entry", &spec.entry);
    kv("args", show_args(&spec.args));
    let mut shape = format!("split {}", spec.split);
    if spec.range > 0 {
        shape.push_str(&format!(", range {}", spec.range));
    }
    shape.push_str(&format!(", replicas {}", spec.replicas));
    kv("segments", shape);
    let l = &spec.limits;
    kv(
        "limits",
        format!(
            "fuel {}, memory {} bytes, wall {} ms, output {} bytes",
            l.fuel, l.memory_bytes, l.wall_ms, l.max_output_bytes
        ),
    );
    let c = &spec.capabilities;
    let mut grants: Vec<String> = Vec::new();
    if c.clock {
        grants.push("clock".into());
    }
    if c.scratch {
        grants.push("scratch".into());
    }
    if !c.env.is_empty() {
        let names: Vec<&str> = c.env.keys().map(String::as_str).collect();
        grants.push(format!("env {}", names.join(" ")));
    }
    if !grants.is_empty() {
        kv("grants", grants.join(", "));
    }
    let r = &spec.requirements;
    if !r.region.is_empty() || !r.capabilities.is_empty() {
        kv(
            "requires",
            format!(
                "region {}, capabilities {}",
                or_dash(&r.region),
                or_dash(&r.capabilities.join(","))
            ),
        );
    }
    kv(
        "submitted",
        format!(
            "{} ago by {}",
            age(now_ms().saturating_sub(job.submitted_ms)),
            job.submitted_by
        ),
    );
    if let Some(c) = &view.cancelled {
        kv("cancelled", cancel_text(c));
    }
    if let Some(why) = &view.waiting {
        kv("waiting", why);
    }
    println!();
    let now = now_ms();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for s in &view.segments {
        let seg = if s.mismatch {
            format!("{}!", s.index)
        } else {
            s.index.to_string()
        };
        let head = vec![seg, show_args(&s.args), state_name(s.state).to_string()];
        if s.results.is_empty() {
            let runner = s
                .claims
                .iter()
                .find(|c| c.lease_until_ms > now)
                .map(|c| short(&c.runner))
                .unwrap_or_else(|| "-".into());
            let mut row = head.clone();
            row.push(runner);
            row.extend(std::iter::repeat_n("-".to_string(), 5));
            rows.push(row);
        }
        for r in &s.results {
            let mut row = head.clone();
            let returns: Vec<String> = r.returns.iter().map(i64::to_string).collect();
            row.extend([
                short(&r.runner),
                outcome(r),
                or_dash(&returns.join(",")),
                r.fuel_used.to_string(),
                format!("{:.3}", r.duration_us as f64 / 1000.0),
                if r.verify().is_ok() {
                    "verified"
                } else {
                    "INVALID"
                }
                .to_string(),
            ]);
            rows.push(row);
        }
    }
    table(
        &[
            "SEG",
            "ARGS",
            "STATE",
            "RUNNER",
            "STATUS",
            "RETURNS",
            "FUEL",
            "DURATION_MS",
            "SIGNATURE",
        ],
        &rows,
    );
    if view.segments.iter().any(|s| s.mismatch) {
        println!("! the runners of this segment report different results");
    }
    // Why runs failed, one line each: reasons are too long for the table.
    let mut first = true;
    for s in &view.segments {
        for r in &s.results {
            let why = reason(r);
            if why.is_empty() || r.status == "module_unavailable" || r.status == "scratch_quota" {
                continue; // nothing to say, or said in the STATUS column already
            }
            if first {
                println!();
                first = false;
            }
            kv(
                "reason",
                format!("segment {} by {}: {why}", s.index, short(&r.runner)),
            );
        }
    }
    println!();
    match &view.result {
        None => {
            let with = view
                .segments
                .iter()
                .filter(|s| !s.results.is_empty())
                .count();
            kv(
                "result",
                format!(
                    "not yet ({with} of {} segments have a result)",
                    view.segments.len()
                ),
            );
        }
        Some(g) => {
            kv("result", if g.ok { "ok" } else { "not ok" });
            kv("combined", g.combined);
            // Each runner once, with how many segments' first results it gave.
            let mut runners: Vec<(String, usize)> = Vec::new();
            for r in &g.runners {
                match runners.iter_mut().find(|(n, _)| n == r) {
                    Some((_, k)) => *k += 1,
                    None => runners.push((r.clone(), 1)),
                }
            }
            let runners: Vec<String> = runners
                .iter()
                .map(|(r, k)| {
                    format!(
                        "{} ({k} segment{})",
                        short(r),
                        if *k == 1 { "" } else { "s" }
                    )
                })
                .collect();
            kv("runners", or_dash(&runners.join(", ")));
            kv("mismatch", if g.mismatch { "yes" } else { "no" });
            if !g.stdout.is_empty() {
                println!();
                println!("stdout:");
                print!("{}", g.stdout);
                if !g.stdout.ends_with('\n') {
                    println!();
                }
            }
        }
    }
}

/// One run's output, for `job logs --json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LogEntry<'a> {
    segment: u32,
    runner: &'a str,
    status: &'a str,
    exit_code: Option<i32>,
    /// The output as UTF-8 (invalid sequences replaced).
    stdout: String,
    stdout_truncated: bool,
}

fn logs(view: &JobView, only: Option<u32>, json: bool) -> anyhow::Result<()> {
    let id = &view.job.id;
    let segments: Vec<&SegmentView> = match only {
        None => view.segments.iter().collect(),
        Some(n) => match view.segments.iter().find(|s| s.index == n) {
            Some(s) => vec![s],
            None => bail!(
                "job {id} has segments 0 to {}; there is no segment {n}",
                view.segments.len().saturating_sub(1)
            ),
        },
    };
    let decode = |s: &SegmentView, r: &SegmentResult| {
        r.stdout_bytes().with_context(|| {
            format!(
                "job {id}: the output of segment {} by {} is not base64",
                s.index, r.runner
            )
        })
    };
    if json {
        let mut entries = Vec::new();
        for s in &segments {
            for r in &s.results {
                entries.push(LogEntry {
                    segment: s.index,
                    runner: &r.runner,
                    status: &r.status,
                    exit_code: r.exit_code,
                    stdout: String::from_utf8_lossy(&decode(s, r)?).into_owned(),
                    stdout_truncated: r.stdout_truncated,
                });
            }
        }
        return print_json(&serde_json::json!({ "job": id, "logs": entries }));
    }
    let mut out = std::io::stdout().lock();
    for s in &segments {
        if s.results.is_empty() {
            writeln!(
                out,
                "== segment {} (no result yet, state {}) ==",
                s.index,
                state_name(s.state)
            )?;
        }
        for r in &s.results {
            writeln!(
                out,
                "== segment {} (runner {}, status {}) ==",
                s.index,
                short(&r.runner),
                outcome(r)
            )?;
            let bytes = decode(s, r)?;
            out.write_all(&bytes)?;
            if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                writeln!(out)?;
            }
            if r.stdout_truncated {
                writeln!(out, "[output truncated]")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_job_split_over_a_range_runs_the_segment_function() {
        let fib = names(&["fib", "fib_segment", "_start"]);
        assert_eq!(default_entry(&fib, 8, 10_000).0, "fib_segment");
        assert_eq!(default_entry(&fib, 1, 10_000), ("_start".to_string(), None));
        assert_eq!(default_entry(&fib, 8, 0), ("_start".to_string(), None));
        let one = names(&["_start", "sum"]);
        assert_eq!(default_entry(&one, 2, 10).0, "sum");
        let many = names(&["_start", "a", "b"]);
        assert_eq!(default_entry(&many, 4, 10), ("_start".to_string(), None));
    }

    #[test]
    fn a_module_without_start_runs_its_only_function() {
        assert_eq!(default_entry(&names(&["run"]), 1, 0).0, "run");
        assert_eq!(
            default_entry(&names(&["run", "other"]), 1, 0),
            ("_start".to_string(), None)
        );
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(5_400), "5s");
        assert_eq!(age(125_000), "2m");
        assert_eq!(age(7_200_000), "2h");
        assert_eq!(age(3 * 86_400_000), "3d");
    }

    #[test]
    fn env_flags_split_at_the_first_equals_sign() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".to_string(), "b=c".to_string())));
        assert!(parse_env("novalue").is_err());
        assert!(parse_env("=x").is_err());
    }
}
