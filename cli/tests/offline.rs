//! `voike` without a daemon: one-line errors, non-zero exit, nothing on stdout.

use std::process::Command;

fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    addr
}

#[test]
fn a_stopped_daemon_is_reported_in_one_line() {
    for cmd in [
        &["status"][..],
        &["peers"],
        &["invite", "--ttl", "1h"],
        &["peers", "--json"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_voike"))
            .args(["--api", &closed_port(), "--token", "x"])
            .args(cmd)
            .env_remove("VOIKE_API")
            .output()
            .expect("run voike");
        assert!(!out.status.success(), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{cmd:?}: {err}");
        assert!(err.contains("not running"), "{cmd:?}: {err}");
        assert!(out.stdout.is_empty(), "{cmd:?}");
    }
}

#[test]
fn a_missing_token_is_explained() {
    let dir = std::env::temp_dir().join(format!("voike-no-token-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_voike"))
        .args(["--api", &closed_port(), "--data-dir"])
        .arg(&dir)
        .arg("status")
        .env_remove("VOIKE_ADMIN_TOKEN")
        .output()
        .expect("run voike");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no admin token") && err.contains("--token"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
