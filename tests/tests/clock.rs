//! Clock skew: a member whose clock runs an hour ahead (libfaketime, from Debian's `faketime`).
//!
//! While its clock is wrong its document changes are refused by every other member (stamped
//! beyond `sync.max_future_skew`), and the skew is reported on both sides: the skewed node says
//! its clock is an hour ahead of its peers', the others count the refused changes and see the
//! offset. Restarted with the right clock, it starts its clock from the wall clock (not from its
//! ledger's last stamp), writes its skewed changes again with fresh stamps, and within a minute
//! every member holds its records — those written while skewed and after — and the ledgers agree.

use std::time::Duration;

use voike_tests::{TestNode, libfaketime, wait_for};

fn heads(node: &TestNode) -> anyhow::Result<String> {
    let v = node.verify()?;
    anyhow::ensure!(v["ok"] == true, "verify: {v}");
    Ok(v["headsHash"].as_str().unwrap_or_default().to_string())
}

#[test]
fn a_member_an_hour_ahead_is_refused_and_reported_then_converges_once_corrected()
-> anyhow::Result<()> {
    let Some(lib) = libfaketime() else {
        // .ci/run installs faketime; a developer machine without it skips with the reason.
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install faketime)");
        return Ok(());
    };
    let a = TestNode::genesis("clock-a")?;
    let b = TestNode::join("clock-b", &a.invite("10m")?)?;
    let mut c = TestNode::join("clock-c", &a.invite("10m")?)?;
    wait_for(Duration::from_secs(30), "all connected", || {
        Ok(a.sees_connected(&b.node_id)?
            && a.sees_connected(&c.node_id)?
            && b.sees_connected(&c.node_id)?)
    })?;
    a.grant_to(&c, "zc.mesh.")?;
    c.create_zone("zc", "zc.mesh.")?;
    c.add_a("zc", "before.zc.mesh.", "10.0.0.1")?;
    wait_for(Duration::from_secs(30), "C's zone everywhere", || {
        Ok(a.record_names("zc")?.len() == 1 && b.record_names("zc")?.len() == 1)
    })?;

    // An hour ahead.
    c.stop()?;
    let lib = lib.to_string_lossy().into_owned();
    c.set_env(&[
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME", "+1h"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("FAKETIME_NO_CACHE", "1"),
    ]);
    c.restart()?;
    c.add_a("zc", "skewed.zc.mesh.", "10.0.0.2")?;
    wait_for(
        Duration::from_secs(30),
        "A and B to refuse C's skewed change",
        || {
            Ok(
                a.metric("voike_clock_future_total{reason=\"change\"}")? >= 1.0
                    && b.metric("voike_clock_future_total{reason=\"change\"}")? >= 1.0,
            )
        },
    )?;
    for n in [&a, &b] {
        assert!(
            !n.record_names("zc")?
                .contains(&"skewed.zc.mesh.".to_string()),
            "{} merged a change stamped an hour ahead",
            n.name
        );
    }
    wait_for(
        Duration::from_secs(30),
        "C to report its clock as skewed",
        || {
            let s = c.get("/hypermesh/status")?.body;
            Ok(s["clock"]["skewed"] == true
                && s["clock"]["offsetMs"]
                    .as_i64()
                    .is_some_and(|o| o > 3_000_000))
        },
    )?;
    assert!(c.metric("voike_clock_offset_seconds")? > 3_000.0);
    let status = voike_tests::voike(&c, &["status"])?;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("SKEWED"),
        "voike status says nothing of the skew: {text}"
    );
    wait_for(Duration::from_secs(30), "A to see C's clock ahead", || {
        let s = a.get("/hypermesh/status")?.body;
        Ok(s["peers"].as_array().into_iter().flatten().any(|p| {
            p["nodeId"] == c.node_id.as_str()
                && p["clockOffsetMs"].as_i64().is_some_and(|o| o > 3_000_000)
        }))
    })?;

    // Corrected.
    c.stop()?;
    c.set_env(&[]);
    c.restart()?;
    assert!(
        c.log().contains("the clock restarts from the wall clock"),
        "C kept its clock an hour ahead"
    );
    c.add_a("zc", "fixed.zc.mesh.", "10.0.0.3")?;
    let want: Vec<String> = ["before.zc.mesh.", "fixed.zc.mesh.", "skewed.zc.mesh."]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        c.record_names("zc")?,
        want,
        "C kept what it wrote while skewed"
    );
    wait_for(
        Duration::from_secs(60),
        "C's writes everywhere and one ledger",
        || {
            anyhow::ensure!(
                a.record_names("zc")? == want,
                "A: {:?}",
                a.record_names("zc")?
            );
            anyhow::ensure!(
                b.record_names("zc")? == want,
                "B: {:?}",
                b.record_names("zc")?
            );
            let h = heads(&a)?;
            anyhow::ensure!(heads(&b)? == h && heads(&c)? == h, "ledger heads differ");
            Ok(true)
        },
    )?;
    wait_for(
        Duration::from_secs(30),
        "C's clock reported within bounds",
        || Ok(c.get("/hypermesh/status")?.body["clock"]["skewed"] == false),
    )?;
    Ok(())
}
