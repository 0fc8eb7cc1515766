//! Seeded random zone content for property tests of the `/vdns` rules, and a reader of
//! exported zone files.
//!
//! [`random_record`] draws a record as a user (or a careless script) might submit it: every
//! type of `RECORD_TYPES` and some that are not, names at the apex, under wildcards, too long or
//! malformed, values with quotes, backslashes, control characters and non-ASCII text, TTL edges.
//! Most draws are valid; the rest must be refused with a 400.

use serde_json::{Value, json};

/// A small deterministic generator (SplitMix64): the same seed gives the same sequence on
/// every machine, so a failure names the seed that reproduces it.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Owner names relative to the zone (`@` is the apex), a few of them invalid.
const LABELS: &[&str] = &[
    "@",
    "@",
    "www",
    "WWW",
    "a",
    "b",
    "c",
    "mail",
    "ns1",
    "ns2",
    "sub",
    "ns.sub",
    "x.sub",
    "*",
    "*.w",
    "*.sub",
    "_sip._tcp",
    "_acme-challenge",
    "-dash",
    "1digit",
    "deep.er.name",
    "x_y",
];

fn owner(rng: &mut Rng, domain: &str) -> String {
    match rng.below(80) {
        0 => format!("{}.{domain}", "l".repeat(63)),
        1 => format!("{}.{domain}", "l".repeat(64)), // label too long
        2 => {
            // A name of about 253 characters (some just over).
            let mut n = domain.to_string();
            while n.len() < 240 + rng.below(20) {
                n = format!("{}.{n}", "q".repeat(1 + rng.below(20)));
            }
            n
        }
        3 => "a..b".to_string() + "." + domain,
        4 => format!("bad!.{domain}"),
        5 => format!("a.*.{domain}"),
        6 => "elsewhere.example.org.".into(),
        7 => domain.trim_end_matches('.').to_string(), // without the trailing dot
        8 => String::new(),
        _ => match *rng.pick(LABELS) {
            "@" => domain.to_string(),
            l => format!("{l}.{domain}"),
        },
    }
}

fn host(rng: &mut Rng, domain: &str) -> String {
    match rng.below(10) {
        0 => "ns.example.net.".into(),
        1 => "target.example.org".into(),
        2 => ".".into(),
        3 => "bad host.".into(),
        _ => owner(rng, domain),
    }
}

fn ipv4(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 => "256.1.1.1".into(),
        1 => "10.0.0".into(),
        2 => " 10.9.8.7 ".into(),
        3 => "010.0.0.1".into(),
        _ => format!(
            "{}.{}.{}.{}",
            rng.below(256),
            rng.below(256),
            rng.below(256),
            rng.below(256)
        ),
    }
}

fn ipv6(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => "::1".into(),
        1 => "::ffff:10.1.2.3".into(),
        2 => "fd00::zz".into(),
        3 => "2001:DB8::1".into(),
        _ => format!("fd00::{:x}:{:x}", rng.below(65536), rng.below(65536)),
    }
}

/// Text with the characters zone files must escape, control characters, non-ASCII text and
/// lengths around the 255-byte string and 4000-byte value limits.
fn text(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "hello",
        " ",
        "\"",
        "\\",
        "\\\"",
        ";",
        "(",
        ")",
        "$ORIGIN",
        "@",
        "v=spf1 -all",
        "é",
        "日本",
        "🦀",
        "\t",
        "\n",
        "\r",
        "\0",
        "\u{7f}",
        "\u{85}",
        "\u{2028}",
        "\u{feff}",
        "\\065",
        "'",
        "`",
        "{",
        "}",
        "=",
        "a\"b\"c",
    ];
    match rng.below(20) {
        0 => "x".repeat(255),
        1 => "y".repeat(256),
        2 => "é".repeat(200),
        3 => "z".repeat(4000),
        4 => "z".repeat(4001),
        5 => "   ".into(),
        _ => (0..1 + rng.below(12)).map(|_| *rng.pick(PIECES)).collect(),
    }
}

fn value(rng: &mut Rng, rtype: &str, domain: &str) -> String {
    match rtype {
        "A" => ipv4(rng),
        "AAAA" => ipv6(rng),
        "CNAME" | "NS" | "PTR" => host(rng, domain),
        "MX" => {
            let pref = match rng.below(8) {
                0 => "65536".to_string(),
                1 => "-1".into(),
                2 => "x".into(),
                _ => rng.below(65536).to_string(),
            };
            let sep = if rng.one_in(8) { "  " } else { " " };
            format!("{pref}{sep}{}", host(rng, domain))
        }
        "SRV" => {
            let mut n = || match rng.below(12) {
                0 => "70000".to_string(),
                1 => "p".into(),
                _ => rng.below(65536).to_string(),
            };
            let (p, w, port) = (n(), n(), n());
            match rng.below(10) {
                0 => format!("{p} {w} {port}"),
                1 => format!("{p}\t{w}\t{port}\t{}", host(rng, domain)),
                _ => format!("{p} {w} {port} {}", host(rng, domain)),
            }
        }
        "CAA" => {
            let flags = *rng.pick(&["0", "128", "255", "256", "x"]);
            let tag = *rng.pick(&["issue", "issuewild", "iodef", "ISSUE", "bogus", ""]);
            let v = match rng.below(6) {
                0 => "ca.example".to_string(),
                1 => "\"ca.example; account=1\"".into(),
                2 => "mailto:security@example.org".into(),
                3 => format!("\"{}\"", text(rng)),
                _ => text(rng),
            };
            format!("{flags} {tag} {v}")
        }
        _ => text(rng),
    }
}

/// A random record for a zone of `domain`, as the `record` object of `POST /vdns/records`.
pub fn random_record(rng: &mut Rng, domain: &str) -> Value {
    const TYPES: &[&str] = &[
        "A", "A", "A", "AAAA", "CNAME", "CNAME", "TXT", "TXT", "SRV", "MX", "NS", "NS", "PTR",
        "CAA", "CAA",
    ];
    let mut rtype = rng.pick(TYPES).to_string();
    match rng.below(30) {
        0 => rtype = rtype.to_ascii_lowercase(),
        1 => rtype = rng.pick(&["SOA", "DNAME", "ANY", ""]).to_string(),
        _ => {}
    }
    let value = value(rng, &rtype.to_ascii_uppercase(), domain);
    let ttl: Value = match rng.below(40) {
        0 => json!(0),
        1 => json!(2_147_483_647u64),
        2 => json!(2_147_483_648u64),
        3 => json!(u64::MAX),
        4 => json!(-1),
        5 => json!(1),
        _ => json!(60 + rng.below(86_400)),
    };
    json!({ "type": rtype, "name": owner(rng, domain), "value": value, "ttl": ttl })
}

/// How many records of a zone file exported by `voiked` are zone data: every record but the
/// SOA and the NS a node puts at the apex of a zone that has none of its own (it names
/// `<node>.nodes.<mesh domain>`).
pub fn exported_data_lines(zone_file: &str) -> usize {
    zone_file
        .lines()
        .filter(|l| !l.starts_with(';') && !l.starts_with('$') && !l.trim().is_empty())
        .filter(|l| {
            let fields: Vec<&str> = l.split('\t').collect();
            match fields.get(3) {
                Some(&"SOA") => false,
                Some(&"NS") => !fields.get(4).is_some_and(|v| v.contains(".nodes.")),
                _ => true,
            }
        })
        .count()
}
