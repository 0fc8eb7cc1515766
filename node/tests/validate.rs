//! `voiked validate` and configuration layering, run against the real binary.

use std::process::{Command, Output};

fn voiked(args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_voiked"))
        .args(args)
        .env_remove("VOIKED_CONFIG")
        .output()?)
}

#[test]
fn validate_names_the_bad_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cases = [
        ("[p2p]\nlisten = [\"tcp://nope\"]\n", "p2p.listen"),
        ("[api]\nlisten = \"127.0.0.1:notaport\"\n", "api.listen"),
        ("[api]\nlisten = \"10.1.2.3:8080\"\n", "api.listen"),
        ("shutdown_timeout = \"forever\"\n", "shutdown_timeout"),
        ("[p2p]\nmax_peer = 3\n", "max_peer"),
        ("[p2p\n", "not valid TOML"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text)?;
        let out = voiked(&["validate", "--config", path.to_str().unwrap_or_default()])?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} should be refused");
        assert!(err.contains(key), "{text}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    }
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[api]\nlisten = \"127.0.0.1:9999\"\n[p2p]\nredial_max = \"5s\"\n",
    )?;
    let out = voiked(&["validate", "--config", good.to_str().unwrap_or_default()])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:9999"));
    Ok(())
}

#[test]
fn shipped_example_config_validates() -> anyhow::Result<()> {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/voiked.example.toml");
    let out = voiked(&["validate", "--config", example])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn environment_overrides_file_and_flags_override_environment() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[api]\nlisten = \"127.0.0.1:7001\"\n")?;
    let run = |env: &[(&str, &str)], extra: &[&str]| -> anyhow::Result<String> {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_voiked"));
        cmd.args(["validate", "--config", path.to_str().unwrap_or_default()])
            .args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr))
    };
    assert!(run(&[], &[])?.contains("api=127.0.0.1:7001"));
    assert!(run(&[("VOIKED_API__LISTEN", "127.0.0.1:7002")], &[])?.contains("api=127.0.0.1:7002"));
    assert!(
        run(
            &[("VOIKED_API__LISTEN", "127.0.0.1:7002")],
            &["--api", "127.0.0.1:7003"]
        )?
        .contains("api=127.0.0.1:7003")
    );
    let bad = run(&[("VOIKED_P2P__MAX_PEERS", "many")], &[])?;
    assert!(
        bad.contains("p2p.max_peers") && bad.contains("VOIKED_P2P__MAX_PEERS"),
        "{bad}"
    );
    Ok(())
}
