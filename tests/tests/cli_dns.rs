//! The `voike` CLI's vDNS and SNRL commands against a real daemon: zones and records written with
//! `voike zone`/`voike record`, read back over real DNS with `voike resolve`, exported as a zone
//! file that BIND accepts, and SNRL endpoints ranked and verified by `voike snrl resolve`.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use voike_tests::{TestNode, voike, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

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

/// A zone `demo` for `demo.mesh.` with an A, a TXT and an MX record; returns the A record's id.
fn demo_zone(node: &TestNode) -> anyhow::Result<String> {
    let zone = ok(node, &["zone", "add", "demo", "demo.mesh."])?;
    assert!(
        zone.contains("demo.mesh.") && zone.contains(&node.node_id),
        "{zone}"
    );
    let id = ok(
        node,
        &[
            "record",
            "add",
            "demo",
            "A",
            "www.demo.mesh.",
            "10.0.0.7",
            "--ttl",
            "60",
        ],
    )?
    .trim()
    .to_string();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "{id:?}"
    );
    ok(
        node,
        &[
            "record",
            "add",
            "demo",
            "TXT",
            "txt.demo.mesh.",
            "hello world",
        ],
    )?;
    ok(
        node,
        &[
            "record",
            "add",
            "demo",
            "MX",
            "demo.mesh.",
            "10 mail.demo.mesh.",
        ],
    )?;
    Ok(id)
}

/// The `voike resolve` line of the answer section that holds `rtype`, if any.
fn answer_line(text: &str, rtype: &str) -> Option<String> {
    text.lines()
        .filter(|l| !l.starts_with(";;"))
        .find(|l| l.split_whitespace().nth(3) == Some(rtype))
        .map(String::from)
}

#[test]
fn records_added_with_the_cli_are_listed_and_served_over_dns() -> anyhow::Result<()> {
    let node = TestNode::spawn("cli-dns", &[])?;
    let a_id = demo_zone(&node)?;

    let list = ok(&node, &["record", "list", "demo"])?;
    let header = list.lines().next().unwrap_or_default();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns, ["NAME", "TTL", "TYPE", "VALUE", "ID"], "{list}");
    for (name, ttl, rtype, value) in [
        ("www.demo.mesh.", "60", "A", "10.0.0.7"),
        ("txt.demo.mesh.", "300", "TXT", "hello world"),
        ("demo.mesh.", "300", "MX", "10 mail.demo.mesh."),
    ] {
        assert!(
            list.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.first() == Some(&name)
                    && cells.get(1) == Some(&ttl)
                    && cells.get(2) == Some(&rtype)
                    && l.contains(value)
            }),
            "{name} {rtype} missing:\n{list}"
        );
    }
    assert!(list.contains(&a_id), "{list}");
    let zones = ok(&node, &["zone", "list"])?;
    let row = zones
        .lines()
        .find(|l| l.starts_with("demo "))
        .unwrap_or_default();
    assert!(
        row.contains("demo.mesh.") && row.split_whitespace().nth(2) == Some("3"),
        "{zones}"
    );

    // The A record over UDP, as dig would print it.
    let mut text = String::new();
    wait_for(DEADLINE, "www.demo.mesh. served", || {
        let out = voike(&node, &["resolve", "www.demo.mesh."])?;
        text = stdout(&out);
        Ok(out.status.success())
    })?;
    let line = answer_line(&text, "A").unwrap_or_default();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells,
        ["www.demo.mesh.", "60", "IN", "A", "10.0.0.7"],
        "{text}"
    );
    assert!(text.contains("status: NOERROR"), "{text}");
    assert!(text.contains(" aa"), "authoritative answer: {text}");

    // TXT and MX, over TCP when asked.
    let txt = ok(&node, &["resolve", "txt.demo.mesh.", "TXT", "--tcp"])?;
    assert!(
        answer_line(&txt, "TXT").is_some_and(|l| l.ends_with("\"hello world\"")),
        "{txt}"
    );
    assert!(txt.contains("over tcp"), "{txt}");
    let mx = ok(&node, &["resolve", "demo.mesh", "mx"])?;
    assert!(
        answer_line(&mx, "MX").is_some_and(|l| l.ends_with("10 mail.demo.mesh.")),
        "{mx}"
    );

    // NODATA is a success without answers, with the zone's SOA.
    let nodata = voike(&node, &["resolve", "www.demo.mesh.", "AAAA"])?;
    let text = stdout(&nodata);
    assert!(nodata.status.success(), "{text}{}", stderr(&nodata));
    assert!(text.contains("status: NOERROR"), "{text}");
    assert!(answer_line(&text, "AAAA").is_none(), "{text}");
    assert!(answer_line(&text, "SOA").is_some(), "{text}");

    // NXDOMAIN fails, shows the SOA and names the status on stderr.
    let nx = voike(&node, &["resolve", "nope.demo.mesh."])?;
    let text = stdout(&nx);
    assert!(!nx.status.success(), "{text}");
    assert!(text.contains("status: NXDOMAIN"), "{text}");
    assert!(
        answer_line(&text, "SOA").is_some_and(|l| l.starts_with("demo.mesh.")),
        "{text}"
    );
    let err = stderr(&nx);
    assert!(
        err.contains("NXDOMAIN") && err.trim().lines().count() == 1,
        "{err}"
    );

    // --json is one parseable object, also on failure.
    let v: Value = serde_json::from_str(&ok(
        &node,
        &["--json", "resolve", "www.demo.mesh.", "--tcp"],
    )?)?;
    assert_eq!(v["status"], "NOERROR", "{v}");
    assert_eq!(v["authoritative"], true, "{v}");
    assert_eq!(v["transport"], "tcp", "{v}");
    assert_eq!(
        v["answers"],
        serde_json::json!([{ "name": "www.demo.mesh.", "ttl": 60, "type": "A", "data": "10.0.0.7" }])
    );
    let nx = voike(&node, &["--json", "resolve", "nope.demo.mesh."])?;
    assert!(!nx.status.success());
    let v: Value = serde_json::from_slice(&nx.stdout)?;
    assert_eq!(v["status"], "NXDOMAIN", "{v}");
    assert_eq!(v["answers"], serde_json::json!([]), "{v}");
    assert_eq!(v["authority"][0]["type"], "SOA", "{v}");
    Ok(())
}

#[test]
fn zone_export_holds_the_records_and_passes_named_checkzone() -> anyhow::Result<()> {
    let node = TestNode::spawn("cli-export", &[])?;
    demo_zone(&node)?;
    let text = ok(&node, &["zone", "export", "demo"])?;
    for expected in [
        "10.0.0.7",
        "\"hello world\"",
        "10 mail.demo.mesh.",
        "SOA",
        "NS",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), &text)?;
    let out = std::process::Command::new("named-checkzone")
        .arg("demo.mesh")
        .arg(file.path())
        .output()
        .map_err(|e| anyhow::anyhow!("named-checkzone (apt-get install bind9-utils): {e}"))?;
    assert!(
        out.status.success(),
        "named-checkzone refused the export:\n{}\n{text}",
        stdout(&out)
    );
    let v: Value = serde_json::from_str(&ok(&node, &["--json", "zone", "export", "demo"])?)?;
    assert_eq!(v["zone"], "demo");
    assert_eq!(v["text"].as_str(), Some(text.as_str()));

    let missing = voike(&node, &["zone", "export", "nope"])?;
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("404"), "{}", stderr(&missing));
    Ok(())
}

#[test]
fn a_bad_record_is_refused_with_a_one_line_error_naming_the_field() -> anyhow::Result<()> {
    let node = TestNode::spawn("cli-bad-record", &[])?;
    ok(&node, &["zone", "add", "demo", "demo.mesh."])?;
    let out = voike(
        &node,
        &["record", "add", "demo", "A", "www.demo.mesh.", "not-an-ip"],
    )?;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("record.value") && err.contains("400") && err.trim().lines().count() == 1,
        "{err}"
    );
    // A name outside the zone (here a relative one) is refused by the daemon, naming the field.
    let out = voike(&node, &["record", "add", "demo", "A", "www", "10.0.0.7"])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("record.name"), "{}", stderr(&out));
    let list = ok(&node, &["record", "list", "demo"])?;
    assert_eq!(list.lines().count(), 1, "only the header: {list}");
    Ok(())
}

#[test]
fn a_removed_record_resolves_to_nxdomain() -> anyhow::Result<()> {
    let node = TestNode::spawn("cli-record-rm", &[])?;
    let id = demo_zone(&node)?;
    wait_for(DEADLINE, "www.demo.mesh. served", || {
        Ok(voike(&node, &["resolve", "www.demo.mesh."])?
            .status
            .success())
    })?;
    let removed = ok(&node, &["record", "rm", &id])?;
    assert!(
        removed.contains("www.demo.mesh.") && removed.contains("10.0.0.7"),
        "{removed}"
    );
    wait_for(DEADLINE, "www.demo.mesh. gone from DNS", || {
        let out = voike(&node, &["resolve", "www.demo.mesh."])?;
        Ok(!out.status.success() && stdout(&out).contains("status: NXDOMAIN"))
    })?;
    let list = ok(&node, &["record", "list", "demo"])?;
    assert!(!list.contains(&id), "{list}");
    let again = voike(&node, &["record", "rm", &id])?;
    assert!(!again.status.success(), "{}", stdout(&again));
    Ok(())
}

#[test]
fn resolve_against_a_closed_port_fails_fast_without_a_token() -> anyhow::Result<()> {
    // A port nothing listens on: bound, then released.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = format!("127.0.0.1:{port}");
    let empty = tempfile::tempdir()?;
    for extra in [&[][..], &["--tcp"][..]] {
        let started = std::time::Instant::now();
        let out = std::process::Command::new(voike_tests::bin("voike"))
            .arg("--data-dir")
            .arg(empty.path())
            .args(["resolve", "www.demo.mesh.", "--server", &server])
            .args(extra)
            .env_remove("VOIKE_API")
            .env_remove("VOIKE_ADMIN_TOKEN")
            .output()?;
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&server) && err.trim().lines().count() == 1,
            "{extra:?}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{extra:?} took {:?}",
            started.elapsed()
        );
    }
    Ok(())
}

/// The addresses of `voike snrl resolve`'s table, best first.
fn ranked_addresses(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("RANK"))
        .skip(1)
        .take_while(|l| !l.starts_with("signature:"))
        .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
        .collect()
}

#[test]
fn snrl_resolve_ranks_registered_endpoints_and_verifies_the_signature() -> anyhow::Result<()> {
    let node = TestNode::spawn("cli-snrl", &[])?;
    let mut ids = Vec::new();
    for (address, region, caps, weight) in [
        ("10.0.0.1", "us", &["http"][..], "1000"),
        ("10.0.0.2", "eu", &["http", "grpc"][..], "100"),
        ("10.0.0.3", "eu", &[][..], "500"),
    ] {
        let mut args = vec![
            "snrl",
            "register",
            "api.demo.mesh.",
            address,
            "443",
            "--region",
            region,
            "--weight",
            weight,
        ];
        for c in caps {
            args.extend(["--cap", c]);
        }
        ids.push(ok(&node, &args)?.trim().to_string());
    }
    let list = ok(&node, &["snrl", "list", "--service", "api.demo.mesh."])?;
    for id in &ids {
        assert!(list.contains(id.as_str()), "{id} missing:\n{list}");
    }
    assert_eq!(
        list.lines().count(),
        4,
        "header and three endpoints: {list}"
    );

    let text = ok(
        &node,
        &[
            "snrl",
            "resolve",
            "api.demo.mesh.",
            "--region",
            "eu",
            "--cap",
            "http",
        ],
    )?;
    let ranked = ranked_addresses(&text);
    assert_eq!(ranked.len(), 3, "{text}");
    assert_eq!(ranked[0], "10.0.0.2:443", "eu + http first: {text}");
    assert!(
        text.contains(&format!("signature: verified (signer {})", node.node_id)),
        "{text}"
    );
    assert!(!text.contains("expired"), "{text}");

    let v: Value = serde_json::from_str(&ok(
        &node,
        &[
            "--json",
            "snrl",
            "resolve",
            "api.demo.mesh.",
            "--region",
            "eu",
            "--cap",
            "http",
        ],
    )?)?;
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["signer"], node.node_id.as_str(), "{v}");
    assert_eq!(v["candidates"][0]["address"], "10.0.0.2", "{v}");
    // What the CLI printed still verifies on its own, without the added fields.
    let mut answer = v.clone();
    if let Some(o) = answer.as_object_mut() {
        o.remove("verified");
        o.remove("expired");
    }
    let answer: voike_protocol::snrl::SignedAnswer = serde_json::from_value(answer)?;
    answer.verify()?;

    // A removed endpoint is no longer a candidate.
    let removed = ok(&node, &["snrl", "rm", &ids[1]])?;
    assert!(removed.contains("10.0.0.2:443"), "{removed}");
    wait_for(DEADLINE, "10.0.0.2 no longer a candidate", || {
        let text = ok(
            &node,
            &["snrl", "resolve", "api.demo.mesh.", "--region", "eu"],
        )?;
        let ranked = ranked_addresses(&text);
        Ok(ranked.len() == 2 && !ranked.iter().any(|a| a == "10.0.0.2:443"))
    })?;
    Ok(())
}

/// A stand-in for the admin API that answers every request with `body` (HTTP 200, JSON); serves
/// `requests` requests, then stops. Returns its `HOST:PORT`.
fn serve_json(body: String, requests: usize) -> anyhow::Result<String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            // Read the request fully (headers, then Content-Length bytes) before answering.
            let mut length = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut request_body = vec![0u8; length];
            let _ = reader.read_exact(&mut request_body);
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(addr)
}

#[test]
fn a_tampered_snrl_answer_is_reported_invalid_and_fails() -> anyhow::Result<()> {
    use voike_protocol::endpoints::Endpoint;
    use voike_protocol::snrl::{ClientInfo, Query, SignedAnswer, rank};

    let key = libp2p_identity::Keypair::generate_ed25519();
    let endpoint = Endpoint {
        id: "e1".into(),
        node: key.public().to_peer_id().to_string(),
        service: "api.demo.mesh.".into(),
        address: "10.0.0.1".into(),
        port: 443,
        region: "eu".into(),
        capabilities: vec!["http".into()],
        weight: 100,
        hlc: "1700000000000.0000".into(),
    };
    let query = Query {
        domain: "api.demo.mesh.".into(),
        client: ClientInfo::default(),
    };
    let candidates = rank(&[endpoint], &query, &Default::default());
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let mut answer = SignedAnswer::sign(&key, &query, candidates, now_ms, 300)?;
    answer.verify()?;
    // Redirect the client elsewhere: the signature no longer matches.
    answer.candidates[0].address = "10.6.6.6".into();
    let api = serve_json(serde_json::to_string(&answer)?, 2)?;

    let run = |json: bool| -> anyhow::Result<Output> {
        let mut c = std::process::Command::new(voike_tests::bin("voike"));
        c.args(["--api", &api, "--token", "t"]);
        if json {
            c.arg("--json");
        }
        Ok(c.args(["snrl", "resolve", "api.demo.mesh."])
            .env_remove("VOIKE_ADMIN_TOKEN")
            .output()?)
    };
    let out = run(false)?;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("signature: INVALID ("), "{text}");
    assert!(!text.contains("verified"), "{text}");
    assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));

    let out = run(true)?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["verified"], false, "{v}");
    assert_eq!(v["candidates"][0]["address"], "10.6.6.6", "{v}");
    Ok(())
}
