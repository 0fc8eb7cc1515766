//! `voike grant`, `voike member`, `voike trust`: who may say what on this mesh.

use serde_json::Value;

use crate::{Client, GrantCmd, MemberCmd, TrustCmd, print_json, table, url_part};

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn grant(client: &Client, cmd: &GrantCmd, json: bool) -> anyhow::Result<()> {
    let r: Value = match cmd {
        GrantCmd::Add { domain, node } => client.call(
            "POST",
            "/mesh/grants",
            Some(&serde_json::json!({ "domain": domain, "node": node })),
        )?,
        GrantCmd::Rm { domain, node } => client.call(
            "DELETE",
            "/mesh/grants",
            Some(&serde_json::json!({ "domain": domain, "node": node })),
        )?,
        GrantCmd::List => client.call("GET", "/mesh/grants", None::<&()>)?,
    };
    if json {
        return print_json(&r);
    }
    match cmd {
        GrantCmd::Add { .. } => println!(
            "granted {} to {}",
            s(&r["grant"]["domain"]),
            s(&r["grant"]["node"])
        ),
        GrantCmd::Rm { .. } => println!(
            "withdrew {} from {}",
            s(&r["removed"]["domain"]),
            s(&r["removed"]["node"])
        ),
        GrantCmd::List => {
            let rows: Vec<Vec<String>> = r["grants"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| vec![s(&g["domain"]), s(&g["node"])])
                .collect();
            table(&["DOMAIN", "NODE"], &rows);
        }
    }
    Ok(())
}

fn revoked_rows(list: &Value) -> Vec<Vec<String>> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|r| vec![s(&r["node"]), s(&r["by"]), s(&r["reason"]), s(&r["hlc"])])
        .collect()
}

pub fn member(client: &Client, cmd: &MemberCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        MemberCmd::Revoke { node, reason } => {
            let r: Value = client.call(
                "POST",
                &format!("/mesh/members/{}/revoke", url_part(node)),
                Some(&serde_json::json!({ "reason": reason })),
            )?;
            if json {
                return print_json(&r);
            }
            println!(
                "revoked {} (changes kept up to {})",
                s(&r["revoked"]["node"]),
                r["revoked"]["cutoff"]
            );
        }
        MemberCmd::Revoked => {
            let r: Value = client.call("GET", "/trust/status", None::<&()>)?;
            if json {
                return print_json(&r["revoked"]);
            }
            table(
                &["NODE", "BY", "REASON", "HLC"],
                &revoked_rows(&r["revoked"]),
            );
        }
    }
    Ok(())
}

pub fn trust(client: &Client, cmd: &TrustCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        TrustCmd::Status => {
            let r: Value = client.call("GET", "/trust/status", None::<&()>)?;
            if json {
                return print_json(&r);
            }
            let revoked = r["revoked"].as_array().map_or(0, Vec::len);
            println!("revoked members  {revoked}");
            println!("grants           {}", r["grants"]);
            println!(
                "sessions         {} ({} members, {} relayed)",
                r["sessions"]["total"], r["sessions"]["members"], r["sessions"]["relayed"]
            );
            let unapplied = r["unapplied"].as_array().map_or(0, Vec::len);
            println!("unapplied        {unapplied}");
            if revoked > 0 {
                table(
                    &["NODE", "BY", "REASON", "HLC"],
                    &revoked_rows(&r["revoked"]),
                );
            }
            let rows: Vec<Vec<String>> = crate::field(&r["events"], "byReason")
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| vec![k.clone(), v.to_string()])
                .collect();
            if !rows.is_empty() {
                table(&["EVENT:REASON", "COUNT"], &rows);
            }
        }
        TrustCmd::Events { limit } => {
            let r: Value =
                client.call("GET", &format!("/trust/events?limit={limit}"), None::<&()>)?;
            if json {
                return print_json(&r);
            }
            let rows: Vec<Vec<String>> = r["events"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    vec![
                        s(&e["hlc"]),
                        s(&e["kind"]),
                        s(&e["body"]["reason"]),
                        s(&e["body"]),
                    ]
                })
                .collect();
            table(&["HLC", "KIND", "REASON", "DETAIL"], &rows);
        }
        TrustCmd::Sessions => {
            let r: Value = client.call("GET", "/trust/sessions", None::<&()>)?;
            if json {
                return print_json(&r);
            }
            let rows: Vec<Vec<String>> = r["sessions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    vec![
                        s(&x["peer"]),
                        if x["member"] == true {
                            "member"
                        } else {
                            "unverified"
                        }
                        .into(),
                        s(&x["transport"]),
                        if x["relayed"] == true {
                            "relayed"
                        } else {
                            "direct"
                        }
                        .into(),
                        s(&x["security"]),
                        crate::field(x, "keyExchange")
                            .get(0)
                            .map(s)
                            .unwrap_or_else(|| "-".into()),
                        s(crate::field(x, "remoteAddr")),
                    ]
                })
                .collect();
            table(
                &[
                    "PEER",
                    "STATUS",
                    "TRANSPORT",
                    "PATH",
                    "SECURITY",
                    "KEY_EXCHANGE",
                    "REMOTE",
                ],
                &rows,
            );
        }
        TrustCmd::Anchors => {
            let r: Value = client.call("GET", "/trust/anchors", None::<&()>)?;
            if json {
                return print_json(&r);
            }
            let rows: Vec<Vec<String>> = r["chains"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| vec![s(&c["author"]), s(&c["seq"]), s(&c["head"])])
                .collect();
            table(&["AUTHOR", "SEQ", "HEAD"], &rows);
            println!("heads hash {}", s(crate::field(&r["anchor"], "headsHash")));
        }
    }
    Ok(())
}
