//! `GET /metrics` as scrapers read it: the Prometheus text format 0.0.4 on request, checked by
//! `promtool check metrics` (Debian package `prometheus`), OpenMetrics otherwise; process metrics
//! and the DNS answer latency histogram.
//!
//! Without `promtool` the promtool test passes and notes the skip in
//! `target/promtool-tests/skipped-*`; `.ci/run` installs it and requires a `ran-*` marker.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use voike_tests::dns::{self, RecordType};
use voike_tests::{TestNode, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

/// `GET /metrics` with `accept` (none when `None`): content type and body.
fn scrape(node: &TestNode, accept: Option<&str>) -> anyhow::Result<(String, String)> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let mut req = agent.get(format!("{}/metrics", node.api));
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let mut resp = req.call().context("GET /metrics")?;
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((ct, resp.body_mut().read_to_string()?))
}

/// The value of the sample line that starts with `sample ` (exact name and labels).
fn sample(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

fn marker(kind: &str, text: &str) {
    let d = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/promtool-tests");
    let _ = std::fs::create_dir_all(&d);
    let _ = std::fs::write(d.join(format!("{kind}-{}", std::process::id())), text);
}

/// A node that has answered a few DNS queries over UDP and TCP (so that every DNS family has
/// samples).
fn node_with_dns_traffic(name: &str) -> anyhow::Result<TestNode> {
    let node = TestNode::spawn(name, &[])?;
    node.create_zone("demo", "demo.mesh.")?;
    node.add_a("demo", "www.demo.mesh.", "10.0.0.1")?;
    let addr = node.dns_addr()?;
    wait_for(DEADLINE, "www.demo.mesh. over DNS", || {
        Ok(dns::udp(addr, "www.demo.mesh.", RecordType::A)?
            .answers
            .len()
            == 1)
    })?;
    for _ in 0..3 {
        dns::udp(addr, "www.demo.mesh.", RecordType::A)?;
        dns::tcp(addr, "nope.demo.mesh.", RecordType::A)?;
    }
    Ok(node)
}

#[test]
fn prometheus_text_format_passes_promtool_check_metrics() -> anyhow::Result<()> {
    let node = node_with_dns_traffic("metrics-promtool")?;
    let (ct, text) = scrape(&node, Some("text/plain;version=0.0.4;q=1,*/*;q=0.1"))?;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    // Every counter's samples have help and type under their own name.
    assert!(
        text.contains("# HELP voike_dns_queries_total ")
            && text.contains("# TYPE voike_dns_queries_total counter"),
        "{text}"
    );
    let promtool = match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => "promtool",
        _ => {
            eprintln!("promtool not installed (Debian package prometheus): check skipped");
            marker("skipped", "promtool not installed");
            return Ok(());
        }
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    assert!(
        out.status.success(),
        "promtool check metrics exited {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    marker("ran", "");
    Ok(())
}

#[test]
fn openmetrics_by_default_with_process_metrics_and_dns_latency() -> anyhow::Result<()> {
    let node = node_with_dns_traffic("metrics-om")?;
    for accept in [
        None,
        Some("*/*"),
        Some(
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
        ),
    ] {
        let (ct, text) = scrape(&node, accept)?;
        assert_eq!(
            ct, "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "{accept:?}"
        );
        assert!(text.ends_with("# EOF\n"), "{accept:?}");
    }
    let (_, text) = scrape(&node, None)?;
    let rss = sample(&text, "process_resident_memory_bytes").context("no RSS")?;
    assert!(rss > 1_000_000.0, "rss {rss}");
    let fds = sample(&text, "process_open_fds").context("no fds")?;
    assert!(fds >= 5.0, "fds {fds}");
    let cpu = sample(&text, "process_cpu_seconds_total").context("no CPU time")?;
    assert!(cpu > 0.0, "cpu {cpu}");
    let start = sample(&text, "process_start_time_seconds").context("no start time")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    assert!(
        start <= now + 1.0 && start > now - 120.0,
        "start {start}, now {now}"
    );
    // Every answered query is observed: at least the 6 sent after the zone answered.
    let count = sample(&text, "voike_dns_answer_seconds_count").context("no DNS histogram")?;
    assert!(count >= 6.0, "{count}");
    let inf = sample(&text, "voike_dns_answer_seconds_bucket{le=\"+Inf\"}").unwrap_or(0.0);
    assert_eq!(inf, count);
    assert!(sample(&text, "voike_dns_answer_seconds_sum").is_some_and(|s| s > 0.0));
    Ok(())
}
