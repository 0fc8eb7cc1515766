//! `voike`: the command-line client of the `voiked` admin API.
//!
//! It finds the API at `--api`, `VOIKE_API`, or the `api.addr` file of `--data-dir` (written by
//! the daemon at start), and the token at `--token`, `VOIKE_ADMIN_TOKEN`, or the `admin.token`
//! file of the data directory. `api.addr` is used only while the process of the data
//! directory's `voiked.pid` runs and wrote it (see `local_api`); there is no default address, so
//! the data directory's token never goes to a port the node did not write. Output is a table,
//! or JSON with `--json`. Errors are one line on stderr and a non-zero exit status.
//!
//! Exit status: 0 on success; 1 on any failure: the daemon is down or refuses the request, a DNS
//! answer other than NOERROR (`voike resolve`; NOERROR without answers is a success), a DNS
//! timeout or network error, an SNRL answer or a job result whose signature does not verify, or
//! a job that `voike job submit --wait` saw fail, end without success or outlast `--timeout`.
//! Usage errors exit with 2 (clap's convention). Output into a closed pipe (`voike ledger tail |
//! head`) ends `voike` at once, quietly, with 141 (128 + SIGPIPE, as a shell shows for tools
//! that SIGPIPE ends), so `set -o pipefail` scripts see that the output was cut.
//!
//! # Layout
//! - this file: arguments, the admin API client and every command but `voike job`.
//! - `dns`: the DNS client of `voike resolve` (queries over UDP and TCP, dig-like output).
//! - `job`: the grid job commands (module upload, submit and wait, list, show, logs).

mod dns;
mod job;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use voike_protocol::api::{
    ErrorBody, InviteRequest, InviteResponse, LedgerEntries, LedgerEntry, NodesResponse, SelfInfo,
};
use voike_protocol::endpoints::{DEFAULT_WEIGHT, Endpoint, EndpointInput};
use voike_protocol::snrl::{ClientInfo, SignedAnswer};
use voike_protocol::zones::{Record, Zone};

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
    /// vDNS zones: create, list, export, owners.
    #[command(subcommand)]
    Zone(ZoneCmd),
    /// vDNS records: add, remove, list.
    #[command(subcommand)]
    Record(RecordCmd),
    /// Ask the node's DNS listener, like dig.
    ///
    /// Exits 0 on NOERROR (with or without answers) and 1 on any other status, a timeout or a
    /// network error.
    Resolve {
        /// The name to look up (absolute; a missing trailing dot is added).
        name: String,
        /// Record type: A, AAAA, CNAME, TXT, SRV, MX, NS, PTR, CAA, SOA or ANY.
        #[arg(value_name = "TYPE", default_value = "A", value_parser = dns::parse_type)]
        rtype: hickory_proto::rr::RecordType,
        /// Ask over TCP (default: UDP, and again over TCP when the answer is truncated).
        #[arg(long)]
        tcp: bool,
        /// DNS server, `IP:PORT` or `IP` (port 53) (default: the node's `dnsAddr`).
        #[arg(long, value_name = "ADDR")]
        server: Option<String>,
    },
    /// SNRL: service endpoints and signed, ranked resolution.
    #[command(subcommand)]
    Snrl(SnrlCmd),
    /// Grid jobs: run WebAssembly on the mesh, list, show, logs.
    #[command(subcommand)]
    Job(JobCmd),
    /// Admin grants of the namespace: who may create zones for which domains.
    #[command(subcommand)]
    Grant(GrantCmd),
    /// Members: revoke one (admins only), list the revoked.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Trust: revocations, refusals and other trust events, ledger anchors, live sessions.
    #[command(subcommand)]
    Trust(TrustCmd),
}

#[derive(Debug, Subcommand)]
enum GrantCmd {
    /// Let NODE_ID create zones at or under DOMAIN (admins only).
    Add {
        /// The domain granted (`b.example.`).
        domain: String,
        /// The member granted it (its peer id, `12D3KooW...`).
        #[arg(value_name = "NODE_ID")]
        node: String,
    },
    /// Withdraw a grant (zones already created under it stay with their owners).
    Rm {
        /// The domain of the grant.
        domain: String,
        /// The member that holds it.
        #[arg(value_name = "NODE_ID")]
        node: String,
    },
    /// Every grant.
    List,
}

#[derive(Debug, Subcommand)]
enum MemberCmd {
    /// Revoke NODE_ID: its links are closed and refused, its later changes refused everywhere,
    /// tickets it issued admit no one, its names and endpoints are no longer served.
    Revoke {
        /// The member to revoke (its peer id, `12D3KooW...`).
        #[arg(value_name = "NODE_ID")]
        node: String,
        /// Why (kept in the members document and the ledger).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The revoked members.
    Revoked,
}

#[derive(Debug, Subcommand)]
enum TrustCmd {
    /// Revocations, grants, trust-event counts, unapplied changes, sessions.
    Status,
    /// Recent trust events (refusals, revocations, skew, forged input).
    Events {
        /// How many (1-1000).
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
    },
    /// Every live link: peer, transport, security and key exchange.
    Sessions,
    /// This node's chain heads and a signed anchor over them.
    Anchors,
}

#[derive(Debug, Subcommand)]
enum JobCmd {
    /// Upload a WebAssembly module (binary or WAT text) and run it as a job.
    ///
    /// Prints the job id alone on stdout; with --wait, follows the job (progress on stderr),
    /// prints it as `job show` does and exits 0 only when it is done and succeeded.
    Submit(Box<SubmitArgs>),
    /// Every job with its state and progress.
    List {
        /// Only the jobs in this state.
        #[arg(long, value_parser = ["pending", "running", "done", "failed", "cancelled"])]
        state: Option<String>,
    },
    /// A job, its segments with their verified results, and the gathered result.
    ///
    /// Exits 1 when a result's signature does not verify.
    Show {
        /// The job's id (from `voike job submit` or `voike job list`).
        id: String,
    },
    /// Cancel a job: no segment of it starts any more and runs under way are stopped.
    ///
    /// Only the node that accepted the job (its submitter) or an admin may cancel it; send the
    /// command to that node. Exits 1 when the job is done already.
    Cancel {
        /// The job's id.
        id: String,
    },
    /// The captured stdout of each segment run, in segment order.
    Logs {
        /// The job's id.
        id: String,
        /// Only this segment (0-based).
        #[arg(long)]
        segment: Option<u32>,
    },
}

#[derive(Debug, clap::Args)]
struct SubmitArgs {
    /// The module: a `.wasm` binary or WAT text, at most 4 MiB.
    file: PathBuf,
    /// The exported function to call (default: `_start`; with --split above 1 and a --range,
    /// the module's only `*_segment` function or only function besides `_start`, if any; for a
    /// module without `_start`, its only function).
    #[arg(long, value_name = "NAME")]
    entry: Option<String>,
    /// An argument (repeatable): argv of `_start`, or one decimal number per parameter.
    #[arg(long = "arg", value_name = "A", allow_hyphen_values = true)]
    args: Vec<String>,
    /// How many segments to fan out into, 1 to 64.
    #[arg(long, default_value_t = 1)]
    split: u32,
    /// Give each segment two more arguments, `start end`, cutting [0, N) into --split parts.
    #[arg(long, visible_alias = "n", value_name = "N", default_value_t = 0)]
    range: u64,
    /// How many different nodes run each segment, 1 to 5.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Run only on nodes of this region.
    #[arg(long)]
    region: Option<String>,
    /// Run only on nodes with this capability (repeatable).
    #[arg(long = "cap", value_name = "C")]
    caps: Vec<String>,
    /// Fuel of each segment (roughly, instructions) (default: 10^10).
    #[arg(long)]
    fuel: Option<u64>,
    /// Linear memory of each segment, in bytes (default: 64 MiB).
    #[arg(long, value_name = "BYTES")]
    memory: Option<u64>,
    /// Wall-clock limit of each segment, in milliseconds (default: 30000).
    #[arg(long, value_name = "N")]
    wall_ms: Option<u64>,
    /// Most stdout bytes kept of each segment (default: 65536).
    #[arg(long, value_name = "BYTES")]
    max_output: Option<u64>,
    /// Let the job read the wall clock.
    #[arg(long)]
    clock: bool,
    /// Give each segment an empty scratch directory.
    #[arg(long)]
    scratch: bool,
    /// An environment variable for the job (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = job::parse_env)]
    env: Vec<(String, String)>,
    /// Standard input of each segment, from FILE (at most 64 KiB).
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,
    /// Follow the job until it ends and show it; exit 1 unless it succeeded.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    timeout: u64,
}

#[derive(Debug, Subcommand)]
enum ZoneCmd {
    /// Create zone ID for DOMAIN, owned by this node.
    Add {
        /// A short name for the zone, used by the other commands (`demo`).
        id: String,
        /// The domain the zone holds (`demo.mesh.`).
        domain: String,
    },
    /// Every zone with its domain, record count and owners.
    List,
    /// The zone ZONE (its id) as a BIND zone file.
    Export {
        /// The zone's id (or its domain).
        zone: String,
    },
    /// The nodes allowed to write a zone's records.
    #[command(subcommand)]
    Owner(OwnerCmd),
    /// Let NODE_ID create zones at or under DOMAIN inside ZONE, and register endpoints there.
    Delegate {
        /// The zone's id.
        zone: String,
        /// The domain delegated, at or under the zone's (`team.demo.mesh.`).
        domain: String,
        /// The member it is delegated to (its peer id).
        #[arg(value_name = "NODE_ID")]
        node: String,
    },
    /// Withdraw a delegation.
    Undelegate {
        /// The zone's id.
        zone: String,
        /// The delegated domain.
        domain: String,
        /// The member it was delegated to.
        #[arg(value_name = "NODE_ID")]
        node: String,
    },
}

#[derive(Debug, Subcommand)]
enum OwnerCmd {
    /// Let NODE_ID write the records of ZONE.
    Add {
        /// The zone's id.
        zone: String,
        /// The member to add as an owner (its peer id).
        #[arg(value_name = "NODE_ID")]
        node: String,
    },
    /// Stop NODE_ID writing ZONE (an owner or an admin; the last owner stays).
    Rm {
        /// The zone's id.
        zone: String,
        /// The owner to remove (its peer id).
        #[arg(value_name = "NODE_ID")]
        node: String,
    },
}

#[derive(Debug, Subcommand)]
enum RecordCmd {
    /// Add a record to ZONE (or update the one with this name, type and value) and print its
    /// id; stderr says whether it was added, updated or unchanged.
    Add {
        /// The zone's id.
        zone: String,
        /// A, AAAA, CNAME, TXT, SRV, MX, NS, PTR or CAA.
        #[arg(value_name = "TYPE")]
        rtype: String,
        /// Owner name inside the zone's domain (`www.demo.mesh.`).
        name: String,
        /// Record data (`10.0.0.7`, `"10 mail.demo.mesh."`, any text for TXT).
        value: String,
        /// Time to live in seconds (default: 300 for a new record; a record that exists keeps
        /// its TTL).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Remove the record ID.
    Rm {
        /// The record's id (from `voike record add` or `voike record list`).
        id: String,
    },
    /// The records of ZONE.
    List {
        /// The zone's id.
        zone: String,
    },
}

#[derive(Debug, Subcommand)]
enum SnrlCmd {
    /// Register an endpoint of this node for SERVICE and print its id.
    ///
    /// Warns on stderr when no zone holds SERVICE: SNRL ranks it, but DNS will not answer it.
    Register {
        /// The service's name (`api.demo.mesh.`).
        service: String,
        /// IPv4 or IPv6 address.
        address: String,
        /// TCP or UDP port of the endpoint, 1 to 65535.
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// Region label (default: none).
        #[arg(long)]
        region: Option<String>,
        /// A capability the endpoint offers (repeatable).
        #[arg(long = "cap", value_name = "CAP")]
        caps: Vec<String>,
        /// Relative share of traffic, 1 to 1000.
        #[arg(long, default_value_t = DEFAULT_WEIGHT)]
        weight: u32,
    },
    /// Registered endpoints, of every node.
    List {
        /// Only the endpoints of this service.
        #[arg(long)]
        service: Option<String>,
    },
    /// Remove the endpoint ID.
    Rm {
        /// The endpoint's id (from `voike snrl register` or `voike snrl list`).
        id: String,
    },
    /// Ranked candidates for DOMAIN, signed by the node, with the signature checked.
    ///
    /// Exits 0 with at least one candidate; 1 when there is none (`no endpoints for DOMAIN`, as
    /// `voike resolve` on NXDOMAIN), when the signature does not verify, or on an API error. An
    /// expired answer is reported, not refused.
    Resolve {
        /// The service's name (`api.demo.mesh.`).
        domain: String,
        /// The client's region.
        #[arg(long)]
        region: Option<String>,
        /// A capability the client needs (repeatable).
        #[arg(long = "cap", value_name = "CAP")]
        caps: Vec<String>,
    },
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
        /// How many entries to show first (0 to 1000; 0: none, with -f only new ones).
        #[arg(long, short = 'n', default_value_t = 20,
              value_parser = clap::value_parser!(u64).range(0..=1000))]
        limit: u64,
        /// Follow: print entries as they arrive (Ctrl-C to stop).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Walk every chain (links and signatures) and report the first fault.
    Verify,
    /// A signed anchor over every chain head.
    Anchor,
    /// Write every entry as JSON lines to FILE (`-`: stdout), with progress on a terminal.
    ///
    /// An existing FILE is refused unless --force. With --json, a summary (file, entries) is
    /// printed as JSON: on stdout, or on stderr when the entries go to stdout.
    Export {
        /// Where to write: a file that does not exist yet, or `-` for stdout.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// The exit status of a `voike` whose output went into a closed pipe (`| head`, `| true`):
/// 128 + SIGPIPE, what a shell shows for a C tool that SIGPIPE ended.
const BROKEN_PIPE_STATUS: u8 = 141;

fn main() -> ExitCode {
    exit_quietly_on_broken_pipe();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::from(BROKEN_PIPE_STATUS),
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` is a write into a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Ends the process quietly with [`BROKEN_PIPE_STATUS`] when `print!`/`println!` panics because
/// stdout is a closed pipe.
///
/// Rust ignores SIGPIPE, so such a write fails with EPIPE and the print macros panic (exit 101
/// with a panic message). Restoring SIGPIPE's default action would need unsafe code, which the
/// workspace forbids; this hook gives the same outcome, for that one panic only. Every other
/// panic is reported as before.
fn exit_quietly_on_broken_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        let broken = message.is_some_and(|m| {
            m.starts_with("failed printing to stdout") && m.contains("Broken pipe")
        });
        if broken {
            std::process::exit(i32::from(BROKEN_PIPE_STATUS));
        }
        report(info);
    }));
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
            None => local_api(&dir)?,
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

    /// Sends a request and returns the body of a successful answer; an error answer becomes a
    /// one-line error with the daemon's message.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", Some(b)) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .force_send_body()
                .send_json(b),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
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
        self.answer(path, sent)
    }

    /// POSTs `bytes` as they are (a module), waiting up to `timeout` for the answer.
    fn upload(&self, path: &str, bytes: &[u8], timeout: Duration) -> anyhow::Result<String> {
        let sent = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", "application/octet-stream")
            .config()
            .timeout_global(Some(timeout))
            .build()
            .send(bytes);
        self.answer(path, sent)
    }

    fn answer(
        &self,
        path: &str,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<String> {
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
            // One line, whatever the daemon wrote: compiler errors span several, with the
            // source quoted in a `N | ...` gutter, which is left out.
            let message: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| {
                    let rest = l
                        .trim_start_matches(|c: char| c.is_ascii_digit())
                        .trim_start();
                    !l.is_empty() && !rest.starts_with('|')
                })
                .collect();
            bail!("{path}: HTTP {}: {}", status.as_u16(), message.join("; "));
        }
        Ok(text)
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let text = self.send(method, path, body)?;
        serde_json::from_str(&text).map_err(|e| anyhow!("{path}: unexpected response: {e}"))
    }

    /// [`Client::call`] for the bodies read into `voike_protocol::api` types that changed in
    /// 0.2 (`/mesh/self`, `/mesh/nodes`, `/mesh/invites`): the deprecated duplicates are
    /// dropped and an older node's seconds read as milliseconds
    /// (`voike_protocol::api::upgrade_body`).
    fn call_any_version<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let mut value: serde_json::Value = self.call(method, path, body)?;
        voike_protocol::api::upgrade_body(&mut value);
        serde_json::from_value(value).map_err(|e| anyhow!("{path}: unexpected response: {e}"))
    }
}

/// The field `name` (camelCase) of `v`, or its snake_case name as nodes before 0.2 sent it.
fn field<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    match v.get(name) {
        Some(x) => x,
        None => {
            let mut snake = String::with_capacity(name.len() + 4);
            for c in name.chars() {
                if c.is_ascii_uppercase() {
                    snake.push('_');
                }
                snake.push(c.to_ascii_lowercase());
            }
            &v[snake]
        }
    }
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), if it runs.
fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19).map(str::to_string)
}

/// The API address in `dir/api.addr`, once it is known to be that of the running node.
///
/// The token is only ever sent to an address the node wrote: `api.addr` must exist, the process
/// named by `voiked.pid` must run with the start time written there (a pid alone can belong to
/// another process after a crash), and `api.addr` must not be older than `voiked.pid` (else an
/// earlier run left it). Otherwise the node is not running, and nothing is sent.
fn local_api(dir: &std::path::Path) -> anyhow::Result<String> {
    let addr_path = dir.join("api.addr");
    let pid_path = dir.join("voiked.pid");
    let not_running = |why: String| {
        anyhow!("the node is not running: {why}; start voiked, or pass --api ADDR to reach another")
    };
    let Ok(addr) = std::fs::read_to_string(&addr_path) else {
        return Err(not_running(format!(
            "{} does not exist (voiked writes it once its API listens)",
            addr_path.display()
        )));
    };
    let pid_file = std::fs::read_to_string(&pid_path).unwrap_or_default();
    let mut lines = pid_file.lines();
    let (Some(pid), Some(start)) = (
        lines.next().and_then(|p| p.trim().parse::<u32>().ok()),
        lines.next().map(str::trim),
    ) else {
        return Err(not_running(format!(
            "{} is stale: {} is missing or unreadable",
            addr_path.display(),
            pid_path.display()
        )));
    };
    if process_start(pid).as_deref() != Some(start) {
        return Err(not_running(format!(
            "voiked (pid {pid}) that wrote {} is gone; the file is stale",
            addr_path.display()
        )));
    }
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&addr_path) < modified(&pid_path) {
        bail!(
            "the node is starting: voiked (pid {pid}) has not written {} yet; try again in a moment",
            addr_path.display()
        );
    }
    Ok(addr.trim().to_string())
}

/// `s` percent-encoded for a URL path segment or query value.
fn url_part(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
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
    if let Cmd::Resolve {
        name,
        rtype,
        tcp,
        server,
    } = &args.command
    {
        // With --server, no admin API (and no token) is needed.
        let server = match server {
            Some(s) => parse_server(s)?,
            None => node_dns_addr(&Client::new(&args)?)?,
        };
        return resolve(server, name, *rtype, *tcp, args.json);
    }
    let client = Client::new(&args)?;
    match &args.command {
        Cmd::Status => {
            let s: SelfInfo = client.call_any_version("GET", "/mesh/self", None::<&()>)?;
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
                vec![
                    "dns".into(),
                    s.dns_addr
                        .map(|a| format!("{a} (UDP and TCP)"))
                        .unwrap_or_else(|| "off".into()),
                ],
                vec!["doh".into(), s.doh_addr.unwrap_or_else(|| "off".into())],
                vec!["listen".into(), s.listen_addrs.join("\n")],
                vec![
                    "reachability".into(),
                    match s.reachability.as_str() {
                        "public" => "public (members dial this node directly)".to_string(),
                        "private" => format!(
                            "behind NAT (reached through relays: {})",
                            if s.relays.is_empty() {
                                "none yet".to_string()
                            } else {
                                s.relays
                                    .iter()
                                    .map(|r| short(r))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            }
                        ),
                        "" => "unknown".to_string(),
                        other => other.to_string(),
                    },
                ],
                vec!["version".into(), s.version],
                vec![
                    "uptime".into(),
                    humantime::format_duration(Duration::from_secs(s.uptime_secs)).to_string(),
                ],
            ];
            let mut rows = rows;
            // The clock against the peers' (a node beyond the skew bound has its changes refused).
            if let Ok(h) = client.call::<serde_json::Value>("GET", "/hypermesh/status", None::<&()>)
            {
                rows.push(vec!["clock".into(), clock_line(&h["clock"])]);
            }
            for row in rows {
                let mut lines = row[1].lines();
                println!("{:<11} {}", row[0], lines.next().unwrap_or(""));
                for l in lines {
                    println!("{:<11} {l}", "");
                }
            }
        }
        Cmd::Peers => {
            let n: NodesResponse = client.call_any_version("GET", "/mesh/nodes", None::<&()>)?;
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
            let r: InviteResponse = client.call_any_version("POST", "/mesh/invites", Some(&req))?;
            if args.json {
                return print_json(&r);
            }
            // The ticket alone on stdout, so that `voiked --join "$(voike invite)"` works.
            println!("{}", r.ticket);
            eprintln!(
                "role {}, expires {}",
                r.role,
                voike_protocol::time::date_and_relative(r.expires_at, now_ms() / 1000)
            );
        }
        Cmd::Ledger(cmd) => ledger(&client, cmd, args.json)?,
        Cmd::Mesh(cmd) => mesh(&client, cmd, args.json)?,
        Cmd::Zone(cmd) => zone(&client, cmd, args.json)?,
        Cmd::Record(cmd) => record(&client, cmd, args.json)?,
        Cmd::Snrl(cmd) => snrl(&client, cmd, args.json)?,
        Cmd::Job(cmd) => job::job(&client, cmd, args.json)?,
        Cmd::Grant(cmd) => trust::grant(&client, cmd, args.json)?,
        Cmd::Member(cmd) => trust::member(&client, cmd, args.json)?,
        Cmd::Trust(cmd) => trust::trust(&client, cmd, args.json)?,
        Cmd::Resolve { .. } => unreachable!("handled above"),
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
        for k in ["id", "atMs", "at_ms", "kind"] {
            o.remove(k);
        }
    }
    format!(
        "{:>6}  {}  {:<18}  {}",
        e["id"],
        field(e, "atMs"),
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
                field(&s, "nodeId").as_str().unwrap_or("?"),
                s["activity"].as_str().unwrap_or("?"),
                opt_num(field(smp, "cpuPct"), 1),
                field(smp, "memUsedBytes").as_u64().unwrap_or(0) >> 20,
                field(smp, "memTotalBytes").as_u64().unwrap_or(0) >> 20,
                opt_num(&smp["load1"], 2),
                field(smp, "rssBytes").as_u64().unwrap_or(0) >> 20,
                field(&s, "sampleIntervalMs"),
            );
            println!(
                "mesh: {} alive, {} suspect, {} dead",
                s["mesh"]["alive"], s["mesh"]["suspect"], s["mesh"]["dead"]
            );
            println!("clock: {}", clock_line(&s["clock"]));
            let rows: Vec<Vec<String>> = s["peers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    vec![
                        field(p, "nodeId").as_str().unwrap_or("?").to_string(),
                        p["state"].as_str().unwrap_or("?").to_string(),
                        opt_num(&p["phi"], 2),
                        field(p, "silentMs").to_string(),
                        opt_num(field(p, "rttMs"), 2),
                        opt_num(field(&p["samples"], "cpuPct"), 1),
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
                        opt_num(field(r, "rttMs"), 2),
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

/// The last 8 characters of a node id (the first ones are alike in every ed25519 id).
fn short(id: &str) -> String {
    let skip = id.chars().count().saturating_sub(8);
    id.chars().skip(skip).collect()
}

fn entry_line(e: &LedgerEntry) -> String {
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
            // With -n 0, the newest entry is still asked for: -f goes on from it.
            let page: LedgerEntries = client.call(
                "GET",
                &format!("/ledger/recent?limit={}", limit.clamp(&1, &1000)),
                None::<&()>,
            )?;
            let mut entries = page.entries;
            entries.reverse();
            let last = entries.last().and_then(|e| e.position);
            if *limit == 0 {
                entries.clear();
            }
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
                    "ledger ok: {} entries from {} authors, heads {}; {} recorded changes stored and applied",
                    report["entries"],
                    report["authors"],
                    field(&report, "headsHash").as_str().unwrap_or(""),
                    report["changes"]["recorded"]
                );
            } else {
                if !report["fault"].is_null() {
                    println!("ledger FAULT: {}", report["fault"]);
                }
                for f in report["changes"]["faults"].as_array().into_iter().flatten() {
                    println!(
                        "change FAULT: entry {} ({}) records {} change {}: {}",
                        f["seq"],
                        f["kind"].as_str().unwrap_or(""),
                        f["doc"].as_str().unwrap_or(""),
                        f["change"].as_str().unwrap_or(""),
                        f["problem"].as_str().unwrap_or("")
                    );
                }
            }
            if report["ok"] != true {
                bail!("ledger verification failed");
            }
        }
        LedgerCmd::Anchor => {
            let anchor: serde_json::Value = client.call("POST", "/ledger/anchor", None::<&()>)?;
            print_json(&anchor)?;
        }
        LedgerCmd::Export { file, force } => ledger_export(client, file, *force, json)?,
    }
    Ok(())
}

/// `voike ledger export`: every entry, oldest first, as JSON lines into `file` (`-`: stdout).
fn ledger_export(
    client: &Client,
    file: &std::path::Path,
    force: bool,
    json: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    // Asked before the file is touched: with the node down, no empty file is left behind.
    // The newest entry's local position tells how many entries there are.
    let newest: LedgerEntries = client.call("GET", "/ledger/recent?limit=1", None::<&()>)?;
    let total = newest
        .entries
        .first()
        .and_then(|e| e.position)
        .map(|p| p + 1)
        .unwrap_or(0);
    let to_stdout = file.as_os_str() == "-";
    let sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        let mut open = std::fs::OpenOptions::new();
        open.write(true);
        if force {
            open.create(true).truncate(true);
        } else {
            open.create_new(true);
        }
        let f = open.open(file).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow!(
                    "{} exists already; pass --force to overwrite it",
                    file.display()
                )
            } else {
                anyhow!("cannot create {}: {e}", file.display())
            }
        })?;
        Box::new(f)
    };
    let mut out = std::io::BufWriter::new(sink);
    // Drawn on stderr only when it is a terminal (indicatif hides it otherwise), and cleared at
    // the end.
    let progress = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "exporting {pos}/{len} entries {wide_bar} {percent}%",
        )
        .map_err(|e| anyhow!("progress template: {e}"))?,
    );
    let mut written = 0u64;
    let copied = (|| -> anyhow::Result<()> {
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
            progress.set_length(total.max(written));
            progress.set_position(written);
        }
        Ok(out.flush()?)
    })();
    drop(out);
    progress.finish_and_clear();
    if let Err(e) = copied {
        if !to_stdout {
            // A cut export is not left to pass for a whole one.
            let _ = std::fs::remove_file(file);
        }
        return Err(e.context(format!("export to {} failed", file.display())));
    }
    let shown = if to_stdout {
        "stdout".to_string()
    } else {
        file.display().to_string()
    };
    if json {
        let summary = serde_json::json!({ "file": shown, "entries": written });
        if to_stdout {
            eprintln!("{summary}");
        } else {
            print_json(&summary)?;
        }
    } else {
        eprintln!("exported {written} entries to {shown}");
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
struct ZoneBody {
    zone: Zone,
}

#[derive(Debug, Serialize, Deserialize)]
struct ZonesBody {
    zones: Vec<Zone>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RecordBody {
    record: Record,
}

/// The answer of `POST /vdns/records`.
#[derive(Debug, Serialize, Deserialize)]
struct AddedRecord {
    record: Record,
    /// `added`, `updated` or `unchanged` (empty from a daemon that does not say).
    #[serde(default)]
    result: String,
    /// The version an update replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Record>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RecordsBody {
    records: Vec<Record>,
    /// The cursor of the next page (`GET ...&after=NEXT`), absent on the last one.
    #[serde(default, skip_serializing)]
    next: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EndpointBody {
    endpoint: Endpoint,
    /// Set by `POST /snrl/endpoints` when DNS will not answer the service (no zone holds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EndpointsBody {
    endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing)]
    next: Option<String>,
}

fn zone_table(zones: &[Zone]) {
    let rows: Vec<Vec<String>> = zones
        .iter()
        .map(|z| {
            vec![
                z.id.clone(),
                z.domain.clone(),
                z.records.to_string(),
                z.owners.join(","),
                z.created_by.clone(),
            ]
        })
        .collect();
    table(&["ID", "DOMAIN", "RECORDS", "OWNERS", "CREATED_BY"], &rows);
}

fn zone(client: &Client, cmd: &ZoneCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        ZoneCmd::Add { id, domain } => {
            let body = serde_json::json!({ "id": id, "domain": domain });
            let r: ZoneBody = client.call("POST", "/vdns/zones", Some(&body))?;
            if json {
                return print_json(&r);
            }
            zone_table(std::slice::from_ref(&r.zone));
        }
        ZoneCmd::List => {
            let r: ZonesBody = client.call("GET", "/vdns/zones", None::<&()>)?;
            if json {
                return print_json(&r);
            }
            zone_table(&r.zones);
        }
        ZoneCmd::Export { zone } => {
            let text = client.send(
                "GET",
                &format!("/vdns/zones/{}/export", url_part(zone)),
                None::<&()>,
            )?;
            if json {
                return print_json(&serde_json::json!({ "zone": zone, "text": text }));
            }
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
        }
        ZoneCmd::Owner(OwnerCmd::Rm { zone, node }) => {
            let r: ZoneBody = client.call(
                "DELETE",
                &format!("/vdns/zones/{}/owners/{}", url_part(zone), url_part(node)),
                None::<&()>,
            )?;
            if json {
                return print_json(&r);
            }
            zone_table(std::slice::from_ref(&r.zone));
        }
        ZoneCmd::Delegate { zone, domain, node } | ZoneCmd::Undelegate { zone, domain, node } => {
            let method = if matches!(cmd, ZoneCmd::Delegate { .. }) {
                "POST"
            } else {
                "DELETE"
            };
            let r: ZoneBody = client.call(
                method,
                &format!("/vdns/zones/{}/delegations", url_part(zone)),
                Some(&serde_json::json!({ "domain": domain, "node": node })),
            )?;
            if json {
                return print_json(&r);
            }
            let rows: Vec<Vec<String>> = r
                .zone
                .delegations
                .iter()
                .map(|(d, nodes)| vec![d.clone(), nodes.join(",")])
                .collect();
            table(&["DELEGATED", "NODES"], &rows);
        }
        ZoneCmd::Owner(OwnerCmd::Add { zone, node }) => {
            let r: ZoneBody = client.call(
                "POST",
                &format!("/vdns/zones/{}/owners", url_part(zone)),
                Some(&serde_json::json!({ "node": node })),
            )?;
            if json {
                return print_json(&r);
            }
            zone_table(std::slice::from_ref(&r.zone));
        }
    }
    Ok(())
}

fn record(client: &Client, cmd: &RecordCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        RecordCmd::Add {
            zone,
            rtype,
            name,
            value,
            ttl,
        } => {
            let mut record = serde_json::json!({ "type": rtype, "name": name, "value": value });
            if let Some(ttl) = ttl {
                record["ttl"] = (*ttl).into();
            }
            let body = serde_json::json!({ "zoneId": zone, "record": record });
            let r: AddedRecord = client.call("POST", "/vdns/records", Some(&body))?;
            if json {
                return print_json(&r);
            }
            // The id alone on stdout, so that `ID=$(voike record add ...)` works.
            println!("{}", r.record.id);
            let rec = &r.record;
            let what = format!("{} {} {} {}", rec.name, rec.ttl, rec.rtype, rec.value);
            match (r.result.as_str(), &r.previous) {
                ("unchanged", _) => {
                    eprintln!("unchanged: {what} is in zone {} already", rec.zone_id)
                }
                ("updated", Some(old)) => eprintln!(
                    "updated {what} in zone {} (ttl was {})",
                    rec.zone_id, old.ttl
                ),
                ("updated", None) => eprintln!("updated {what} in zone {}", rec.zone_id),
                _ => eprintln!("added {what} to zone {}", rec.zone_id),
            }
        }
        RecordCmd::Rm { id } => {
            let path = format!("/vdns/records/{}", url_part(id));
            let r: RecordBody = client.call("DELETE", &path, None::<&()>)?;
            if json {
                return print_json(&r);
            }
            let rec = &r.record;
            println!(
                "removed {} {} {} {} from zone {}",
                rec.name, rec.ttl, rec.rtype, rec.value, rec.zone_id
            );
        }
        RecordCmd::List { zone } => {
            let path = format!("/vdns/records?zoneId={}", url_part(zone));
            // Every page, following the cursor.
            let mut r: RecordsBody = client.call("GET", &path, None::<&()>)?;
            while let Some(next) = r.next.take() {
                let more: RecordsBody = client.call(
                    "GET",
                    &format!("{path}&after={}", url_part(&next)),
                    None::<&()>,
                )?;
                r.records.extend(more.records);
                r.next = more.next;
            }
            if json {
                return print_json(&r);
            }
            r.records
                .sort_by(|a, b| (&a.name, &a.rtype, &a.value).cmp(&(&b.name, &b.rtype, &b.value)));
            let rows: Vec<Vec<String>> = r
                .records
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        r.ttl.to_string(),
                        r.rtype.clone(),
                        r.value.clone(),
                        r.id.clone(),
                    ]
                })
                .collect();
            table(&["NAME", "TTL", "TYPE", "VALUE", "ID"], &rows);
        }
    }
    Ok(())
}

/// `address:port`, with an IPv6 address in brackets.
fn host_port(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn snrl(client: &Client, cmd: &SnrlCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        SnrlCmd::Register {
            service,
            address,
            port,
            region,
            caps,
            weight,
        } => {
            let input = EndpointInput {
                service: service.clone(),
                address: address.clone(),
                port: u64::from(*port),
                region: region.clone().unwrap_or_default(),
                capabilities: caps.clone(),
                weight: *weight,
            };
            let r: EndpointBody = client.call("POST", "/snrl/endpoints", Some(&input))?;
            if json {
                return print_json(&r);
            }
            // The id alone on stdout, so that `ID=$(voike snrl register ...)` works.
            println!("{}", r.endpoint.id);
            let e = &r.endpoint;
            eprintln!(
                "registered {} at {} (region {}, capabilities {}, weight {})",
                e.service,
                host_port(&e.address, e.port),
                or_dash(&e.region),
                or_dash(&e.capabilities.join(",")),
                e.weight
            );
            if let Some(w) = &r.warning {
                eprintln!("warning: {w}");
            }
        }
        SnrlCmd::List { service } => {
            let path = match service {
                Some(s) => format!("/snrl/endpoints?service={}", url_part(s)),
                None => "/snrl/endpoints".to_string(),
            };
            let mut r: EndpointsBody = client.call("GET", &path, None::<&()>)?;
            let sep = if path.contains('?') { '&' } else { '?' };
            while let Some(next) = r.next.take() {
                let more: EndpointsBody = client.call(
                    "GET",
                    &format!("{path}{sep}after={}", url_part(&next)),
                    None::<&()>,
                )?;
                r.endpoints.extend(more.endpoints);
                r.next = more.next;
            }
            if json {
                return print_json(&r);
            }
            r.endpoints.sort_by(|a, b| {
                (&a.service, &a.address, a.port).cmp(&(&b.service, &b.address, b.port))
            });
            let rows: Vec<Vec<String>> = r
                .endpoints
                .iter()
                .map(|e| {
                    vec![
                        e.service.clone(),
                        host_port(&e.address, e.port),
                        or_dash(&e.region),
                        or_dash(&e.capabilities.join(",")),
                        e.weight.to_string(),
                        short(&e.node),
                        e.id.clone(),
                    ]
                })
                .collect();
            table(
                &[
                    "SERVICE", "ADDRESS", "REGION", "CAPS", "WEIGHT", "NODE", "ID",
                ],
                &rows,
            );
        }
        SnrlCmd::Rm { id } => {
            let path = format!("/snrl/endpoints/{}", url_part(id));
            let r: EndpointBody = client.call("DELETE", &path, None::<&()>)?;
            if json {
                return print_json(&r);
            }
            let e = &r.endpoint;
            println!(
                "removed endpoint {} ({} at {})",
                e.id,
                e.service,
                host_port(&e.address, e.port)
            );
        }
        SnrlCmd::Resolve {
            domain,
            region,
            caps,
        } => snrl_resolve(client, domain, region.as_deref(), caps, json)?,
    }
    Ok(())
}

fn snrl_resolve(
    client: &Client,
    domain: &str,
    region: Option<&str>,
    caps: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let query = voike_protocol::snrl::Query {
        domain: domain.to_string(),
        client: ClientInfo {
            region: region.unwrap_or_default().to_string(),
            capabilities: caps.to_vec(),
        },
    };
    // Kept as sent, so that --json shows the daemon's answer untouched.
    let mut raw: serde_json::Value = client.call("POST", "/snrl/resolve", Some(&query))?;
    let answer: SignedAnswer = serde_json::from_value(raw.clone())
        .map_err(|e| anyhow!("/snrl/resolve: unexpected response: {e}"))?;
    let verified = answer.verify();
    let now = now_ms();
    let expired = answer.is_expired(now);
    if json {
        if let Some(o) = raw.as_object_mut() {
            o.insert("verified".into(), verified.is_ok().into());
            o.insert("expired".into(), expired.into());
        }
        print_json(&raw)?;
    } else {
        if !answer.candidates.is_empty() {
            let rows: Vec<Vec<String>> = answer
                .candidates
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    vec![
                        (i + 1).to_string(),
                        host_port(&c.address, c.port),
                        short(&c.node),
                        or_dash(&c.region),
                        or_dash(&c.capabilities.join(",")),
                        format!(
                            "{:.3}",
                            f64::from(c.score) / f64::from(voike_protocol::snrl::MAX_SCORE)
                        ),
                        c.path.clone(),
                    ]
                })
                .collect();
            table(
                &["RANK", "ADDRESS", "NODE", "REGION", "CAPS", "SCORE", "PATH"],
                &rows,
            );
        }
        match &verified {
            Ok(()) => println!("signature: verified (signer {})", answer.signer),
            Err(e) => println!("signature: INVALID ({e})"),
        }
        let end = answer
            .issued_at
            .saturating_add(u64::from(answer.ttl).saturating_mul(1000));
        if expired {
            println!(
                "answer: expired {}s ago (ttl {}s)",
                now.saturating_sub(end) / 1000,
                answer.ttl
            );
        } else {
            println!(
                "answer: expires in {}s (ttl {}s)",
                end.saturating_sub(now).div_ceil(1000),
                answer.ttl
            );
        }
    }
    verified.map_err(|e| anyhow!("the answer for {domain} does not verify: {e}"))?;
    if answer.candidates.is_empty() {
        // As `voike resolve` on NXDOMAIN: a script can tell "nothing there" from an answer.
        bail!("no endpoints for {domain}");
    }
    Ok(())
}

/// A DNS server address: `IP:PORT`, `IP` (port 53) or `HOST:PORT`.
fn parse_server(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let addr = if let Ok(addr) = s.parse::<std::net::SocketAddr>() {
        addr
    } else if let Ok(ip) = s.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        (ip, 53).into()
    } else {
        s.to_socket_addrs()
            .with_context(|| format!("--server {s}: not IP:PORT, IP or HOST:PORT"))?
            .next()
            .with_context(|| format!("--server {s}: the name has no address"))?
    };
    if addr.port() == 0 {
        bail!("--server {s}: port 0 is no server's port; give one of 1-65535");
    }
    Ok(addr)
}

/// The node's DNS listener from `/mesh/self` (a wildcard bind is reached over loopback).
fn node_dns_addr(client: &Client) -> anyhow::Result<std::net::SocketAddr> {
    let me: SelfInfo = client.call_any_version("GET", "/mesh/self", None::<&()>)?;
    let addr = me
        .dns_addr
        .context("the node reports no DNS listener (dnsAddr is null); pass --server")?;
    let mut sa: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("the node's dnsAddr {addr:?} is not IP:PORT"))?;
    if sa.ip().is_unspecified() {
        sa.set_ip(if sa.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(sa)
}

#[derive(Debug, Serialize)]
struct ResolveOutput {
    status: String,
    authoritative: bool,
    truncated: bool,
    server: String,
    transport: &'static str,
    answers: Vec<dns::Row>,
    authority: Vec<dns::Row>,
    additional: Vec<dns::Row>,
}

fn resolve(
    server: std::net::SocketAddr,
    name: &str,
    rtype: hickory_proto::rr::RecordType,
    tcp: bool,
    json: bool,
) -> anyhow::Result<()> {
    let qname = dns::parse_name(name)?;
    let x = dns::exchange(server, &qname, rtype, tcp)?;
    let m = &x.message;
    let status = dns::status(m.metadata.response_code);
    let out = ResolveOutput {
        status: status.clone(),
        authoritative: m.metadata.authoritative,
        truncated: m.metadata.truncation,
        server: server.to_string(),
        transport: x.transport,
        answers: dns::rows(&m.answers),
        authority: dns::rows(&m.authorities),
        additional: dns::rows(&m.additionals),
    };
    if json {
        print_json(&out)?;
    } else {
        if x.retried_over_tcp {
            eprintln!(";; truncated answer over UDP, asked again over TCP");
        }
        println!(
            ";; status: {status}, flags: {}; {} answer{} from {server} over {}",
            dns::flags(m),
            out.answers.len(),
            if out.answers.len() == 1 { "" } else { "s" },
            x.transport
        );
        dns::print_rows(&out.answers);
        if !out.authority.is_empty() {
            println!(";; authority:");
            dns::print_rows(&out.authority);
        }
        if !out.additional.is_empty() {
            println!(";; additional:");
            dns::print_rows(&out.additional);
        }
    }
    if status != "NOERROR" {
        bail!("{qname} {rtype}: {status}");
    }
    Ok(())
}

/// `offset +3 ms from 2 peers (within 60000 ms)`, or the skew warning.
fn clock_line(c: &serde_json::Value) -> String {
    match field(c, "offsetMs").as_i64() {
        None => "no peer reports yet".into(),
        Some(o) => {
            let verdict = if c["skewed"] == true {
                format!(
                    "SKEWED beyond {} ms: this node's changes are refused by its peers; fix its clock and restart it",
                    field(c, "boundMs")
                )
            } else {
                format!("within {} ms", field(c, "boundMs"))
            };
            format!("offset {o:+} ms from {} peers ({verdict})", c["peers"])
        }
    }
}
