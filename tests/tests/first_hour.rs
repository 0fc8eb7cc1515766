//! What a new operator meets in the first hour (issue 15): the CLI's address and token rules,
//! output into closed pipes, SIGHUP, and the CLI's messages.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use voike_tests::{TestNode, bin, voike, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

/// A fake HTTP server on `listener` that keeps what each request sent and answers 500.
struct Catcher {
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Catcher {
    fn start(listener: TcpListener) -> anyhow::Result<Catcher> {
        listener.set_nonblocking(true)?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = vec![0u8; 8192];
                        let n = conn.read(&mut buf).unwrap_or(0);
                        if let Ok(mut s) = seen2.lock() {
                            s.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                        }
                        let _ = conn.write_all(
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Catcher {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Every request received so far.
    fn requests(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Catcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A data directory with an admin token and no node: `voike` must not fall back to a default
/// address (and so send the token to whatever listens on 127.0.0.1:8080).
#[test]
fn cli_without_api_addr_says_the_node_is_not_running_and_sends_nothing() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("data");
    std::fs::create_dir(&dir)?;
    let token = "a-token-that-must-stay-home-0123456789";
    std::fs::write(dir.join("admin.token"), token)?;
    // Catch what reaches the old default port, where that port is free on this machine.
    let catcher = TcpListener::bind("127.0.0.1:8080")
        .ok()
        .map(Catcher::start)
        .transpose()?;
    let out = Command::new(bin("voike"))
        .arg("--data-dir")
        .arg(&dir)
        .arg("status")
        .env_remove("VOIKE_API")
        .env_remove("VOIKE_ADMIN_TOKEN")
        .output()?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("the node is not running"), "{err}");
    assert!(err.contains("api.addr"), "{err}");
    assert!(!err.contains("8080"), "{err}");
    if let Some(c) = catcher {
        let reqs = c.requests();
        assert!(reqs.is_empty(), "voike sent {reqs:?}");
    }
    Ok(())
}

/// After `kill -9` the node's `api.addr` stays behind; whatever takes the old port next must
/// not receive the token.
#[test]
fn cli_with_stale_api_addr_after_kill_sends_no_token() -> anyhow::Result<()> {
    let mut node = TestNode::genesis("stale-addr")?;
    let out = voike(&node, &["status"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let addr = std::fs::read_to_string(node.dir.join("api.addr"))?
        .trim()
        .to_string();
    node.kill()?;
    assert!(
        node.dir.join("api.addr").exists(),
        "kill -9 leaves api.addr"
    );
    // Another process takes the port (std sets SO_REUSEADDR, so TIME_WAIT does not stop it).
    let mut listener = None;
    wait_for(DEADLINE, "the old API port to be free", || {
        listener = TcpListener::bind(&addr).ok();
        Ok(listener.is_some())
    })?;
    let catcher = Catcher::start(listener.take().ok_or_else(|| anyhow::anyhow!("no port"))?)?;
    let out = voike(&node, &["status"])?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("the node is not running"), "{err}");
    assert!(err.contains("stale"), "{err}");
    let reqs = catcher.requests();
    assert!(reqs.is_empty(), "voike sent {reqs:?}");
    assert!(!reqs.iter().any(|r| r.contains(&node.token)));

    // Started again, the node writes both files anew and the CLI reaches it.
    drop(catcher);
    node.restart()?;
    let out = voike(&node, &["status"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

/// Runs `voike --data-dir DIR args` with its stdout into a pipe whose reading end is already
/// closed (as after `| true`), so that its first write fails with EPIPE.
fn voike_into_closed_pipe(node: &TestNode, args: &[&str]) -> anyhow::Result<Output> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let child = Command::new(bin("voike"))
        .arg("--data-dir")
        .arg(&node.dir)
        .args(args)
        .env_remove("VOIKE_API")
        .env_remove("VOIKE_ADMIN_TOKEN")
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(child.wait_with_output()?)
}

/// `voike ... | head -n 1` through a shell, as a user types it; the status is voike's.
fn voike_into_head(node: &TestNode, args: &str) -> anyhow::Result<Output> {
    let script = format!(
        "set -o pipefail; '{}' --data-dir '{}' {args} | head -n 1 >/dev/null",
        bin("voike").display(),
        node.dir.display()
    );
    Ok(Command::new("bash")
        .args(["-c", &script])
        .env_remove("VOIKE_API")
        .env_remove("VOIKE_ADMIN_TOKEN")
        .output()?)
}

/// Status 141 is 128 + SIGPIPE: what a shell shows for a tool killed by SIGPIPE.
const BROKEN_PIPE: i32 = 141;

#[test]
fn output_into_a_closed_pipe_ends_quietly_with_status_141() -> anyhow::Result<()> {
    let node = TestNode::genesis("pipe")?;
    node.create_zone("demo", "demo.mesh.")?;
    for i in 0..20 {
        node.add_a("demo", &format!("h{i}.demo.mesh."), "10.0.0.1")?;
    }
    for args in [
        &["ledger", "tail", "-n", "500"][..],
        &["ledger", "tail", "-n", "500", "--json"],
        &["zone", "export", "demo"],
        &["record", "list", "demo"],
        &["grant", "list"],
    ] {
        let out = voike_into_closed_pipe(&node, args)?;
        assert_eq!(
            out.status.code(),
            Some(BROKEN_PIPE),
            "voike {args:?}: {}",
            stderr(&out)
        );
        assert!(out.stderr.is_empty(), "voike {args:?}: {}", stderr(&out));
    }
    // Through a real `head`, voike may also finish before head closes the pipe (status 0).
    let out = voike_into_head(&node, "zone export demo")?;
    assert!(
        matches!(out.status.code(), Some(0 | BROKEN_PIPE)) && out.stderr.is_empty(),
        "{:?}: {}",
        out.status,
        stderr(&out)
    );
    Ok(())
}

fn voike_ok(node: &TestNode, args: &[&str]) -> anyhow::Result<Output> {
    let out = voike(node, args)?;
    anyhow::ensure!(
        out.status.success(),
        "voike {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// The TTL of the record `name` in `zone`, from the API.
fn ttl_of(node: &TestNode, zone: &str, name: &str) -> anyhow::Result<u64> {
    let r = node.get(&format!("/vdns/records?zoneId={zone}"))?;
    r.body["records"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["name"] == name))
        .and_then(|x| x["ttl"].as_u64())
        .ok_or_else(|| anyhow::anyhow!("no record {name}: {}", r.body))
}

fn record_adds(node: &TestNode) -> anyhow::Result<usize> {
    let r = node.get("/ledger/recent?limit=1000")?;
    Ok(r.body["entries"]
        .as_array()
        .map(|l| l.iter().filter(|e| e["kind"] == "record.add").count())
        .unwrap_or(0))
}

#[test]
fn re_adding_a_record_without_ttl_keeps_its_ttl_and_says_what_happened() -> anyhow::Result<()> {
    let node = TestNode::genesis("readd")?;
    voike_ok(&node, &["zone", "add", "demo", "demo.mesh."])?;
    let add = ["record", "add", "demo", "A", "www.demo.mesh.", "10.0.0.7"];
    let out = voike_ok(&node, &[&add[..], &["--ttl", "60"]].concat())?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(stderr(&out).starts_with("added "), "{}", stderr(&out));
    let writes = record_adds(&node)?;

    // The same record again, without --ttl: kept as it is, nothing written.
    let out = voike_ok(&node, &add)?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    assert!(stderr(&out).starts_with("unchanged"), "{}", stderr(&out));
    assert_eq!(ttl_of(&node, "demo", "www.demo.mesh.")?, 60);
    assert_eq!(
        record_adds(&node)?,
        writes,
        "an unchanged record writes nothing"
    );

    // With the TTL it has: unchanged too.
    let out = voike_ok(&node, &[&add[..], &["--ttl", "60", "--json"]].concat())?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["result"], "unchanged", "{v}");

    // Another TTL: updated, and the old one is named.
    let out = voike_ok(&node, &[&add[..], &["--ttl", "120"]].concat())?;
    let err = stderr(&out);
    assert!(
        err.starts_with("updated ") && err.contains("ttl was 60"),
        "{err}"
    );
    assert_eq!(ttl_of(&node, "demo", "www.demo.mesh.")?, 120);
    assert_eq!(record_adds(&node)?, writes + 1);

    // The API says the same.
    let r = node.post(
        "/vdns/records",
        &serde_json::json!({ "zoneId": "demo", "record": { "type": "A", "name": "www.demo.mesh.", "value": "10.0.0.7" } }),
    )?;
    assert_eq!(r.body["result"], "unchanged", "{}", r.body);
    assert_eq!(r.body["record"]["ttl"], 120, "{}", r.body);
    let r = node.post(
        "/vdns/records",
        &serde_json::json!({ "zoneId": "demo", "record": { "type": "A", "name": "new.demo.mesh.", "value": "10.0.0.8" } }),
    )?;
    assert_eq!(r.body["result"], "added", "{}", r.body);
    assert_eq!(r.body["record"]["ttl"], 300, "{}", r.body);
    Ok(())
}

#[test]
fn sighup_does_not_stop_voiked() -> anyhow::Result<()> {
    let mut node = TestNode::genesis("hup")?;
    node.signal(nix::sys::signal::Signal::SIGHUP)?;
    wait_for(DEADLINE, "the SIGHUP log line", || {
        if let Some(status) = node.try_exit()? {
            return Err(
                voike_tests::Fatal(format!("voiked exited on SIGHUP with {status}")).into(),
            );
        }
        Ok(node
            .log()
            .contains("SIGHUP: nothing to reload; config changes need a restart"))
    })?;
    assert!(node.try_exit()?.is_none(), "voiked exited on SIGHUP");
    assert_eq!(node.get("/healthz")?.status, 200);
    let out = voike(&node, &["status"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    // It still stops cleanly afterwards.
    let status = node.stop()?;
    assert!(status.success(), "{status}");
    assert!(!node.dir.join("api.addr").exists());
    assert!(!node.dir.join("voiked.pid").exists());
    Ok(())
}

/// `voike` with `args` run in `cwd` (where a relative FILE lands).
fn voike_in(node: &TestNode, cwd: &std::path::Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(bin("voike"))
        .current_dir(cwd)
        .arg("--data-dir")
        .arg(&node.dir)
        .args(args)
        .env_remove("VOIKE_API")
        .env_remove("VOIKE_ADMIN_TOKEN")
        .output()?)
}

/// The entry count of `exported N entries to WHERE`.
fn exported_count(err: &str, to: &str) -> anyhow::Result<usize> {
    let n = err
        .trim()
        .strip_prefix("exported ")
        .and_then(|r| r.strip_suffix(&format!(" entries to {to}")))
        .ok_or_else(|| anyhow::anyhow!("not an export summary: {err:?}"))?;
    Ok(n.parse()?)
}

fn lines_of(path: &std::path::Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(path)?;
    for line in text.lines() {
        let _: serde_json::Value = serde_json::from_str(line)?;
    }
    Ok(text.lines().count())
}

#[test]
fn ledger_export_refuses_existing_files_writes_stdout_and_summarises_in_json() -> anyhow::Result<()>
{
    let mut node = TestNode::genesis("export")?;
    node.create_zone("demo", "demo.mesh.")?;
    node.add_a("demo", "www.demo.mesh.", "10.0.0.1")?;
    let work = tempfile::tempdir()?;
    let file = work.path().join("a.jsonl");

    let out = voike_in(&node, work.path(), &["ledger", "export", "a.jsonl"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    // Not a terminal: no progress drawn, only the one-line summary.
    assert!(
        !err.contains('\r') && err.trim().lines().count() == 1,
        "{err:?}"
    );
    let n = exported_count(&err, "a.jsonl")?;
    assert!(n >= 3, "{err}");
    assert_eq!(lines_of(&file)?, n);

    // An existing file is kept unless --force.
    std::fs::write(&file, "keep me\n")?;
    let out = voike_in(&node, work.path(), &["ledger", "export", "a.jsonl"])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pass --force"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file)?, "keep me\n");
    let out = voike_in(
        &node,
        work.path(),
        &["ledger", "export", "a.jsonl", "--force"],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines_of(&file)?, exported_count(&stderr(&out), "a.jsonl")?);

    // `-` is stdout, not a file named `-`.
    let out = voike_in(&node, work.path(), &["ledger", "export", "-"])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!work.path().join("-").exists());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().count(),
        exported_count(&stderr(&out), "stdout")?,
        "{text}"
    );
    assert!(text.lines().all(|l| l.starts_with('{')), "{text}");

    // --json: a JSON summary on stdout.
    let out = voike_in(
        &node,
        work.path(),
        &["ledger", "export", "b.jsonl", "--json"],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["file"], "b.jsonl", "{v}");
    assert_eq!(v["entries"], lines_of(&work.path().join("b.jsonl"))?, "{v}");

    // With the node down, no empty file is left to be refused next time.
    node.stop()?;
    let out = voike_in(&node, work.path(), &["ledger", "export", "c.jsonl"])?;
    assert!(!out.status.success());
    assert!(!work.path().join("c.jsonl").exists());
    Ok(())
}

#[test]
fn invite_shows_its_expiry_as_a_date_and_a_countdown() -> anyhow::Result<()> {
    let node = TestNode::genesis("expiry")?;
    let out = voike_ok(&node, &["invite", "--ttl", "1h"])?;
    let err = stderr(&out);
    let when = err
        .trim()
        .strip_prefix("role member, expires ")
        .and_then(|r| r.split_once(" (in "))
        .ok_or_else(|| anyhow::anyhow!("{err}"))?;
    // RFC 3339 in UTC, to the second: 2026-12-02T02:35:00Z.
    let date = when.0.as_bytes();
    assert!(
        date.len() == 20 && date[10] == b'T' && date[19] == b'Z' && date[4] == b'-',
        "{err}"
    );
    assert!(when.1 == "59 min)" || when.1 == "60 min)", "{err}");
    Ok(())
}

#[test]
fn a_cut_ticket_says_to_copy_the_whole_ticket_quoted() -> anyhow::Result<()> {
    let genesis = TestNode::genesis("cut-issuer")?;
    let ticket = genesis.invite("10m")?;
    let data = tempfile::tempdir()?;
    let dir = data.path().join("d");
    let dir = dir.to_string_lossy();
    for cut in [
        &ticket[..ticket.len() - 7],
        &ticket[..ticket.len() / 2],
        &ticket[2..],
    ] {
        let args = [
            &["--data-dir", &dir, "--join", cut][..],
            voike_tests::LOOPBACK,
        ]
        .concat();
        let out = voike_tests::voiked_output(&args, DEADLINE)?;
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("invalid --join ticket"), "{err}");
        assert!(err.contains("copy the whole ticket"), "{err}");
        assert!(err.contains("quote it"), "{err}");
    }
    Ok(())
}

/// `voiked --config FILE validate` with `text` as FILE.
fn validate(text: &str) -> anyhow::Result<Output> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), text)?;
    let path = file.path().to_string_lossy().into_owned();
    voike_tests::voiked_output(&["--config", &path, "validate"], DEADLINE)
}

#[test]
fn config_errors_say_where_and_how_to_write_a_duration() -> anyhow::Result<()> {
    let out = validate("shutdown_timeout = \"10s\"\n[api]\nlisten = 127.0.0.1:8080\n")?;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("not valid TOML at line 3, column "), "{err}");

    let out = validate("shutdown_timeout = 5\n")?;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("`shutdown_timeout`"), "{err}");
    assert!(err.contains("e.g. \"5s\""), "{err}");

    let out = validate("shutdown_timeout = \"5s\"\n")?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

#[test]
fn ledger_tail_n_0_prints_nothing() -> anyhow::Result<()> {
    let node = TestNode::genesis("tail0")?;
    let out = voike_ok(&node, &["ledger", "tail", "-n", "0"])?;
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = voike_ok(&node, &["ledger", "tail", "-n", "0", "--json"])?;
    assert!(out.stdout.is_empty());
    let out = voike_ok(&node, &["ledger", "tail", "-n", "1"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    Ok(())
}

/// `voike ARGS --help`, which needs no node.
fn help(path: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin("voike"))
        .args(path)
        .arg("--help")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "voike {path:?} --help: {}",
        stderr(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The lines of section `title` (`Commands:`, `Arguments:`) of a help text, blank ones left out
/// (the long form of `--help` puts each help text on its own line, with blank lines between).
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| l.trim().is_empty() || l.starts_with("  "))
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// The items of a help section without help text: an item line (two spaces, a name) with
/// nothing after the name and no deeper-indented line after it.
fn without_help(lines: &[&str]) -> Vec<String> {
    let item = |l: &str| l.starts_with("  ") && !l.starts_with("   ");
    lines
        .iter()
        .enumerate()
        .filter(|(i, l)| {
            item(l)
                && l.split_whitespace().nth(1).is_none()
                && lines.get(i + 1).is_none_or(|next| item(next))
        })
        .map(|(_, l)| l.trim().to_string())
        .collect()
}

#[test]
fn every_positional_argument_has_help_text() -> anyhow::Result<()> {
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    let mut missing = Vec::new();
    let mut seen = 0;
    while let Some(path) = todo.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args)?;
        for line in section(&text, "Commands:") {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name != "help" {
                let mut sub = path.clone();
                sub.push(name.to_string());
                todo.push(sub);
            }
        }
        let arguments = section(&text, "Arguments:");
        seen += arguments
            .iter()
            .filter(|l| l.starts_with("  <") || l.starts_with("  ["))
            .count();
        for name in without_help(&arguments) {
            missing.push(format!("voike {} {name}", path.join(" ")));
        }
    }
    assert!(seen > 20, "only {seen} positional arguments found");
    assert!(missing.is_empty(), "no help text: {missing:#?}");
    Ok(())
}

#[test]
fn port_0_is_refused_where_the_api_needs_1_to_65535() -> anyhow::Result<()> {
    let node = TestNode::genesis("port0")?;
    node.create_zone("demo", "demo.mesh.")?;
    let out = voike(
        &node,
        &["snrl", "register", "api.demo.mesh.", "127.0.0.1", "0"],
    )?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("1..=65535"), "{}", stderr(&out));
    let out = voike(
        &node,
        &["resolve", "x.demo.mesh.", "--server", "127.0.0.1:0"],
    )?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("port 0"), "{}", stderr(&out));
    // Port 1 is a port.
    let out = voike(
        &node,
        &["snrl", "register", "api.demo.mesh.", "127.0.0.1", "1"],
    )?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

#[test]
fn status_shows_the_dns_and_doh_addresses() -> anyhow::Result<()> {
    let node = TestNode::genesis("status-dns")?;
    let out = voike_ok(&node, &["status"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).filter(|r| r.starts_with(' ')))
            .map(|r| r.trim().to_string())
            .unwrap_or_default()
    };
    assert!(
        value("dns").starts_with(&node.dns_addr()?.to_string()),
        "{text}"
    );
    assert_eq!(value("doh"), node.doh_addr()?.to_string(), "{text}");
    Ok(())
}

/// Every string value of a JSON log line (fields and message), nested ones included.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// Logs say `doh=off` or `doh=127.0.0.1:8053`, never Rust's `Some(...)` or `"None"`. (The swarm
/// event loop's lines are left out here: that module is checked separately.)
#[test]
fn logs_print_plain_values_not_rust_debug_ones() -> anyhow::Result<()> {
    let mut off = TestNode::spawn("log-doh-off", &["--log-format", "json", "--doh", "off"])?;
    off.stop()?;
    let log = off.log();
    let mut dns_line = None;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{e}: {line}"))?;
        if v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("voiked::swarm"))
        {
            continue;
        }
        let mut values = Vec::new();
        strings(&v, &mut values);
        for s in &values {
            assert!(
                s != "None" && !s.starts_with("Some(") && !s.contains("Some("),
                "a Rust debug value in {line}"
            );
        }
        if values.iter().any(|s| s == "DNS listening") {
            dns_line = Some(v);
        }
    }
    let dns_line = dns_line.unwrap_or_else(|| panic!("no `DNS listening` line in {log}"));
    assert_eq!(dns_line["fields"]["doh"], "off", "{dns_line}");

    let mut on = TestNode::spawn("log-doh-on", &[])?;
    let doh = on.doh_addr()?;
    on.stop()?;
    let log = on.log();
    let line = log
        .lines()
        .find(|l| l.contains("DNS listening"))
        .unwrap_or_else(|| panic!("no `DNS listening` line in {log}"));
    assert!(line.contains(&format!("doh={doh}")), "{line}");
    assert!(!line.contains("Some("), "{line}");
    Ok(())
}
