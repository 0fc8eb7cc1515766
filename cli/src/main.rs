//! `voike`: the command-line client of the `voiked` admin API.
//!
//! It finds the API at `--api`, `VOIKE_API`, the `api.addr` file of `--data-dir` (written by the
//! daemon at start), or `127.0.0.1:8080`; and the token at `--token`, `VOIKE_ADMIN_TOKEN`, or the
//! `admin.token` file of the data directory. Output is a table, or JSON with `--json`. Errors are
//! one line on stderr and a non-zero exit status.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use serde::Serialize;
use serde::de::DeserializeOwned;
use voike_protocol::api::{
    ErrorBody, InviteRequest, InviteResponse, LedgerEntries, LedgerEntry, NodesResponse, SelfInfo,
};

/// Command-line client of the voiked admin API.
#[derive(Debug, Parser)]
#[command(name = "voike", version, about)]
struct Args {
    /// Admin API address, `HOST:PORT` or a URL.
    #[arg(long, global = true, env = "VOIKE_API")]
    api: Option<String>,
    /// Admin token (default: the data directory's admin.token).
    #[arg(long, global = true, env = "VOIKE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory of the local voiked (for its token and API address).
    #[arg(long, global = true, env = "VOIKED_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// This node: id, mesh, addresses, roles.
    Status,
    /// Every known member with its connection state.
    Peers,
    /// Issue a join ticket (admins only).
    Invite {
        /// How long the ticket stays valid (e.g. 30m, 1h, 7d).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Role granted: member or admin.
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// The Truth Ledger.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// Hypermesh: health, routes and events as this node sees them.
    #[command(subcommand)]
    Mesh(MeshCmd),
}

#[derive(Debug, Subcommand)]
enum MeshCmd {
    /// This node's samples and every member's state.
    Status,
    /// The ranked route table.
    Routes,
    /// Health events (peer_suspect, peer_down, ...); with -f, keep printing new ones.
    Events {
        /// Follow: print events as they happen (Ctrl-C to stop).
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCmd {
    /// The newest entries; with -f, keep printing new ones.
    Tail {
        /// How many entries to show first.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: u64,
        /// Follow: print entries as they arrive (Ctrl-C to stop).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Walk every chain (links and signatures) and report the first fault.
    Verify,
    /// A signed anchor over every chain head.
    Anchor,
    /// Write every entry as JSON lines to FILE.
    Export { file: PathBuf },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

fn data_dir(args: &Args) -> PathBuf {
    args.data_dir
        .clone()
        .or_else(|| dirs::data_dir().map(|d| d.join("voiked")))
        .unwrap_or_else(|| PathBuf::from("voiked-data"))
}

impl Client {
    fn new(args: &Args) -> anyhow::Result<Client> {
        let dir = data_dir(args);
        let api = match &args.api {
            Some(a) => a.clone(),
            None => std::fs::read_to_string(dir.join("api.addr"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "127.0.0.1:8080".to_string()),
        };
        let base = if api.starts_with("http://") || api.starts_with("https://") {
            api.trim_end_matches('/').to_string()
        } else {
            format!("http://{api}")
        };
        let token = match &args.token {
            Some(t) => t.clone(),
            None => {
                let path = dir.join("admin.token");
                std::fs::read_to_string(&path)
                    .map(|s| s.trim().to_string())
                    .with_context(|| {
                        format!(
                            "no admin token: pass --token, set VOIKE_ADMIN_TOKEN, or point --data-dir at the node's data directory ({} is not readable)",
                            path.display()
                        )
                    })?
            }
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Ok(Client { base, token, agent })
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            (_, Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(b),
            (_, None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                bail!(
                    "voiked is not running at {} (connection refused)",
                    self.base
                )
            }
            Err(ureq::Error::ConnectionFailed) => {
                bail!("voiked is not running at {} (connection failed)", self.base)
            }
            Err(e) => bail!("cannot reach voiked at {}: {e}", self.base),
        };
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the response of {path}"))?;
        if !status.is_success() {
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|e| format!("{} ({})", e.error.message, e.error.code))
                .unwrap_or(text);
            bail!("{path}: HTTP {}: {message}", status.as_u16());
        }
        serde_json::from_str(&text).map_err(|e| anyhow!("{path}: unexpected response: {e}"))
    }
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows as a left-aligned table with a header.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    match &args.command {
        Cmd::Status => {
            let s: SelfInfo = client.call("GET", "/mesh/self", None::<&()>)?;
            if args.json {
                return print_json(&s);
            }
            let rows = vec![
                vec!["node".into(), s.node_id],
                vec!["mesh".into(), s.mesh_id],
                vec!["membership".into(), s.membership],
                vec!["roles".into(), s.roles.join(", ")],
                vec![
                    "genesis".into(),
                    if s.genesis { "yes" } else { "no" }.into(),
                ],
                vec![
                    "members".into(),
                    format!("{} known, {} connected", s.known_members, s.connected_peers),
                ],
                vec!["api".into(), s.api_addr],
                vec!["listen".into(), s.listen_addrs.join("\n")],
                vec!["version".into(), s.version],
                vec![
                    "uptime".into(),
                    humantime::format_duration(Duration::from_secs(s.uptime_secs)).to_string(),
                ],
            ];
            for row in rows {
                let mut lines = row[1].lines();
                println!("{:<11} {}", row[0], lines.next().unwrap_or(""));
                for l in lines {
                    println!("{:<11} {l}", "");
                }
            }
        }
        Cmd::Peers => {
            let n: NodesResponse = client.call("GET", "/mesh/nodes", None::<&()>)?;
            if args.json {
                return print_json(&n);
            }
            let rows: Vec<Vec<String>> = n
                .nodes
                .iter()
                .map(|p| {
                    vec![
                        p.node_id.clone(),
                        p.state.clone(),
                        p.connection.clone().unwrap_or_else(|| "-".into()),
                        p.rtt_ms
                            .map(|r| format!("{r:.1}"))
                            .unwrap_or_else(|| "-".into()),
                        p.roles.join(","),
                        p.addresses.first().cloned().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            table(
                &["NODE", "STATE", "PATH", "RTT_MS", "ROLE", "ADDRESS"],
                &rows,
            );
        }
        Cmd::Invite { ttl, role } => {
            let req = InviteRequest {
                ttl: Some(ttl.clone()),
                role: Some(role.clone()),
            };
            let r: InviteResponse = client.call("POST", "/mesh/invites", Some(&req))?;
            if args.json {
                return print_json(&r);
            }
            // The ticket alone on stdout, so that `voiked --join "$(voike invite)"` works.
            println!("{}", r.ticket);
            eprintln!("role {}, expires at unix time {}", r.role, r.expires_at);
        }
        Cmd::Ledger(cmd) => ledger(&client, cmd, args.json)?,
        Cmd::Mesh(cmd) => mesh(&client, cmd, args.json)?,
    }
    Ok(())
}

fn opt_num(v: &serde_json::Value, digits: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn event_line(e: &serde_json::Value) -> String {
    let mut rest = e.clone();
    if let Some(o) = rest.as_object_mut() {
        for k in ["id", "at_ms", "kind"] {
            o.remove(k);
        }
    }
    format!(
        "{:>6}  {}  {:<18}  {}",
        e["id"],
        e["at_ms"],
        e["kind"].as_str().unwrap_or("?"),
        rest
    )
}

fn mesh(client: &Client, cmd: &MeshCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        MeshCmd::Status => {
            let s: serde_json::Value = client.call("GET", "/hypermesh/status", None::<&()>)?;
            if json {
                return print_json(&s);
            }
            let smp = &s["samples"];
            println!(
                "node {}  {}  cpu {}%  mem {} / {} MiB  load {}  rss {} MiB  sampling every {} ms",
                s["node_id"].as_str().unwrap_or("?"),
                s["activity"].as_str().unwrap_or("?"),
                opt_num(&smp["cpu_pct"], 1),
                smp["mem_used_bytes"].as_u64().unwrap_or(0) >> 20,
                smp["mem_total_bytes"].as_u64().unwrap_or(0) >> 20,
                opt_num(&smp["load1"], 2),
                smp["rss_bytes"].as_u64().unwrap_or(0) >> 20,
                s["sample_interval_ms"],
            );
            println!(
                "mesh: {} alive, {} suspect, {} dead",
                s["mesh"]["alive"], s["mesh"]["suspect"], s["mesh"]["dead"]
            );
            let rows: Vec<Vec<String>> = s["peers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    vec![
                        p["node_id"].as_str().unwrap_or("?").to_string(),
                        p["state"].as_str().unwrap_or("?").to_string(),
                        opt_num(&p["phi"], 2),
                        p["silent_ms"].to_string(),
                        opt_num(&p["rtt_ms"], 2),
                        opt_num(&p["samples"]["cpu_pct"], 1),
                        p["region"].as_str().unwrap_or("-").to_string(),
                    ]
                })
                .collect();
            table(
                &[
                    "NODE",
                    "STATE",
                    "PHI",
                    "SILENT_MS",
                    "RTT_MS",
                    "CPU%",
                    "REGION",
                ],
                &rows,
            );
            Ok(())
        }
        MeshCmd::Routes => {
            let r: serde_json::Value = client.call("GET", "/hypermesh/routes", None::<&()>)?;
            if json {
                return print_json(&r);
            }
            let rows: Vec<Vec<String>> = r["routes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    vec![
                        r["peer"].as_str().unwrap_or("?").to_string(),
                        opt_num(&r["score"], 3),
                        opt_num(&r["health"], 2),
                        opt_num(&r["rtt_ms"], 2),
                        r["path"].as_str().unwrap_or("-").to_string(),
                        r["region"].as_str().unwrap_or("-").to_string(),
                    ]
                })
                .collect();
            table(
                &["PEER", "SCORE", "HEALTH", "RTT_MS", "PATH", "REGION"],
                &rows,
            );
            Ok(())
        }
        MeshCmd::Events { follow } => {
            let mut since: Option<u64> = None;
            loop {
                let path = match since {
                    Some(s) => format!("/hypermesh/events?since={s}"),
                    None => "/hypermesh/events".to_string(),
                };
                let page: serde_json::Value = client.call("GET", &path, None::<&()>)?;
                for e in page["events"].as_array().cloned().unwrap_or_default() {
                    since = e["id"].as_u64().or(since);
                    if json {
                        println!("{e}");
                    } else {
                        println!("{}", event_line(&e));
                    }
                }
                if !*follow {
                    return Ok(());
                }
                if since.is_none() {
                    since = Some(0);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

fn entry_line(e: &LedgerEntry) -> String {
    let short = |s: &str| {
        s.chars()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
    };
    format!(
        "{:>6}  {}  {}#{:<5}  {:<20}  {}",
        e.position.map(|p| p.to_string()).unwrap_or_default(),
        e.hlc,
        short(&e.author),
        e.seq,
        e.kind,
        e.body
    )
}

fn ledger(client: &Client, cmd: &LedgerCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        LedgerCmd::Tail { limit, follow } => {
            let page: LedgerEntries = client.call(
                "GET",
                &format!("/ledger/recent?limit={}", limit.clamp(&1, &1000)),
                None::<&()>,
            )?;
            let mut entries = page.entries;
            entries.reverse();
            let last = entries.last().and_then(|e| e.position);
            for e in &entries {
                if json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    println!("{}", entry_line(e));
                }
            }
            let mut next = last.map(|p| p + 1).unwrap_or(0);
            if !*follow {
                return Ok(());
            }
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let page: LedgerEntries = client.call(
                    "GET",
                    &format!("/ledger/recent?from={next}&limit=1000"),
                    None::<&()>,
                )?;
                for e in &page.entries {
                    next = e.position.map(|p| p + 1).unwrap_or(next);
                    if json {
                        println!("{}", serde_json::to_string(e)?);
                    } else {
                        println!("{}", entry_line(e));
                    }
                }
            }
        }
        LedgerCmd::Verify => {
            let report: serde_json::Value = client.call("POST", "/ledger/verify", None::<&()>)?;
            if json {
                print_json(&report)?;
            } else if report["ok"] == true {
                println!(
                    "ledger ok: {} entries from {} authors, heads {}",
                    report["entries"],
                    report["authors"],
                    report["heads_hash"].as_str().unwrap_or("")
                );
            } else {
                println!("ledger FAULT: {}", report["fault"]);
            }
            if report["ok"] != true {
                bail!("ledger verification failed");
            }
        }
        LedgerCmd::Anchor => {
            let anchor: serde_json::Value = client.call("POST", "/ledger/anchor", None::<&()>)?;
            print_json(&anchor)?;
        }
        LedgerCmd::Export { file } => {
            use std::io::Write;
            let mut out = std::io::BufWriter::new(
                std::fs::File::create(file)
                    .with_context(|| format!("cannot create {}", file.display()))?,
            );
            // The newest entry's local position tells how many entries there are.
            let newest: LedgerEntries =
                client.call("GET", "/ledger/recent?limit=1", None::<&()>)?;
            let total = newest
                .entries
                .first()
                .and_then(|e| e.position)
                .map(|p| p + 1)
                .unwrap_or(0);
            let mut written = 0u64;
            let mut next = 0u64;
            loop {
                let page: LedgerEntries = client.call(
                    "GET",
                    &format!("/ledger/recent?from={next}&limit=1000"),
                    None::<&()>,
                )?;
                if page.entries.is_empty() {
                    break;
                }
                for e in &page.entries {
                    writeln!(out, "{}", serde_json::to_string(e)?)?;
                    next = e.position.map(|p| p + 1).unwrap_or(next + 1);
                    written += 1;
                }
                if total > 0 {
                    eprint!(
                        "\rexported {written}/{total} entries ({:.0}%)",
                        written as f64 * 100.0 / total as f64
                    );
                }
            }
            out.flush()?;
            eprintln!("\rexported {written} entries to {}", file.display());
        }
    }
    Ok(())
}
