//! The daemon under the kernel settings a hardened systemd unit can impose
//! (`deploy/voiked.service` and its comments):
//!
//! - `ProcSubset=pid`: /proc mounted `subset=pid` in a mount namespace (`unshare --mount --pid
//!   --fork`, then `mount -t proc -o subset=pid proc /proc`). PerfWatch cannot read
//!   `/proc/stat`, `/proc/meminfo` or `/proc/loadavg`; the node must say so, once, and report its
//!   load as unknown, not as an idle machine.
//! - `MemoryDenyWriteExecute=yes`: `prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)` before exec
//!   (set by a `python3` wrapper: the tests have no `unsafe`). wasmtime cannot make memory
//!   executable; the node must not advertise the `grid` capability.
//!
//! Each test says why and passes when the machine cannot provide the setting (no root, no
//! `unshare`, no `python3`, a kernel without `PR_SET_MDWE`).

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use voike_tests::{TestNode, http, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

/// A process started by a test, killed on drop (with `unshare --kill-child`, its namespace too).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `node`'s `voiked` command under `wrapper` (a program and its arguments, followed by
/// voiked's path and arguments) and fills in the node's API address and token.
fn start_wrapped(node: &mut TestNode, wrapper: &[&str]) -> anyhow::Result<Guard> {
    let plain = node.command();
    let mut c = Command::new(wrapper[0]);
    c.args(&wrapper[1..]);
    c.arg(plain.get_program()).args(plain.get_args());
    for (k, v) in plain.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let log_path = node.dir.with_file_name(format!("{}.log", node.name));
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut guard = Guard(
        c.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    let addr_file = node.dir.join("api.addr");
    wait_for(
        DEADLINE,
        &format!("{} to write api.addr", node.name),
        || {
            if let Some(status) = guard.0.try_wait()? {
                anyhow::bail!(voike_tests::Fatal(format!(
                    "voiked exited with {status}: {}",
                    fs::read_to_string(&log_path).unwrap_or_default()
                )));
            }
            Ok(addr_file.exists())
        },
    )?;
    node.api = format!("http://{}", fs::read_to_string(&addr_file)?.trim());
    node.token = fs::read_to_string(node.dir.join("admin.token"))?
        .trim()
        .to_string();
    wait_for(DEADLINE, &format!("{} API", node.name), || {
        Ok(http("GET", &node.api, "/healthz", None, None)?.status == 200)
    })?;
    node.node_id = node.get("/mesh/self")?.body["nodeId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok(guard)
}

/// Whether this process may make a mount namespace with a `subset=pid` /proc.
fn subset_pid_available() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("not root".into());
    }
    let probe = Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "--kill-child", "sh", "-c"])
        .arg("mount -t proc -o subset=pid proc /proc && ! test -e /proc/stat")
        .output();
    match probe {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "unshare or mount -o subset=pid failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run unshare: {e}")),
    }
}

#[test]
fn a_node_that_cannot_read_proc_says_sampling_is_unavailable() -> anyhow::Result<()> {
    if let Err(why) = subset_pid_available() {
        eprintln!("SKIPPED a_node_that_cannot_read_proc_says_sampling_is_unavailable: {why}");
        return Ok(());
    }
    let mut node = TestNode::create("sandbox-proc", &[])?;
    node.set_env(&[
        ("VOIKED_HYPERMESH__SAMPLE_FAST", "200ms"),
        ("VOIKED_HYPERMESH__SAMPLE_SLOW", "400ms"),
    ]);
    let _guard = start_wrapped(
        &mut node,
        &[
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            r#"mount -t proc -o subset=pid proc /proc && exec "$0" "$@""#,
        ],
    )?;
    wait_for(DEADLINE, "sampling reported unavailable", || {
        let s = node.get("/hypermesh/status")?.body;
        Ok(s["sampling"]
            .as_str()
            .is_some_and(|v| v.starts_with("unavailable")))
    })?;
    let status = node.get("/hypermesh/status")?.body;
    let sampling = status["sampling"].as_str().unwrap_or_default();
    assert!(sampling.contains("/proc/stat"), "{status}");
    assert_eq!(status["samplesKnown"], false, "{status}");
    assert_eq!(
        status["samples"]["memTotalBytes"], 0,
        "unknown, not a figure: {status}"
    );
    // Several samples later the log has said it once.
    let runs = |node: &TestNode| -> anyhow::Result<u64> {
        let a = node.get("/hypermesh/agents")?.body;
        Ok(a["agents"][0]["runs"].as_u64().unwrap_or(0))
    };
    let first = runs(&node)?;
    wait_for(DEADLINE, "three more samples", || {
        Ok(runs(&node)? >= first + 3)
    })?;
    let log = fs::read_to_string(node.dir.with_file_name("sandbox-proc.log"))?;
    assert_eq!(
        log.matches("cannot sample this machine").count(),
        1,
        "said once: {log}"
    );
    Ok(())
}

/// Whether `python3` can set PR_SET_MDWE (65) with PR_MDWE_REFUSE_EXEC_GAIN (1) on this kernel.
const MDWE_WRAPPER: &str = "import ctypes, os, sys\n\
    libc = ctypes.CDLL(None, use_errno=True)\n\
    if libc.prctl(65, 1, 0, 0, 0) != 0:\n    sys.exit('prctl(PR_SET_MDWE) failed: errno %d' % ctypes.get_errno())\n\
    if len(sys.argv) > 1:\n    os.execv(sys.argv[1], sys.argv[1:])\n";

fn mdwe_available() -> Result<(), String> {
    match Command::new("python3").args(["-c", MDWE_WRAPPER]).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(format!("cannot run python3: {e}")),
    }
}

#[test]
fn a_node_without_executable_memory_does_not_advertise_grid() -> anyhow::Result<()> {
    if let Err(why) = mdwe_available() {
        eprintln!("SKIPPED a_node_without_executable_memory_does_not_advertise_grid: {why}");
        return Ok(());
    }
    let genesis = TestNode::spawn("sandbox-mdwe-a", &[])?;
    let ticket = genesis.invite("10m")?;
    let mut node = TestNode::create("sandbox-mdwe-b", &["--join", &ticket])?;
    let _guard = start_wrapped(&mut node, &["python3", "-c", MDWE_WRAPPER])?;

    let status = node.get("/hypermesh/status")?.body;
    let caps: Vec<&str> = status["capabilities"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c.as_str()).collect())
        .unwrap_or_default();
    assert!(!caps.contains(&"grid"), "{status}");
    let log = fs::read_to_string(node.dir.with_file_name("sandbox-mdwe-b.log"))?;
    assert!(log.contains("this node cannot run WebAssembly"), "{log}");
    // An upload is not blamed on the module.
    let mut up = ureq::post(&format!("{}/vvm/modules", node.api))
        .header("Authorization", &format!("Bearer {}", node.token))
        .config()
        .http_status_as_error(false)
        .build()
        .send(&br#"(module (func (export "run")))"#[..])?;
    let body: serde_json::Value = serde_json::from_str(&up.body_mut().read_to_string()?)?;
    assert_eq!(up.status(), 503, "{body}");
    assert_eq!(body["error"]["code"], "grid_unusable", "{body}");

    // The other member sees it without the capability, and with the grid on itself.
    wait_for(DEADLINE, "genesis has a route to the node", || {
        let r = genesis.get("/hypermesh/routes")?.body;
        Ok(r["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["peer"] == node.node_id.as_str())))
    })?;
    let r = genesis.get("/hypermesh/routes")?.body;
    let route = r["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["peer"] == node.node_id.as_str()))
        .cloned()
        .unwrap_or_default();
    assert!(
        !route["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "grid")),
        "{route}"
    );
    let own = genesis.get("/hypermesh/status")?.body;
    assert!(
        own["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "grid")),
        "{own}"
    );
    Ok(())
}
