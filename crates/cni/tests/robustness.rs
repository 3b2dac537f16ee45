//! No input makes weft-cni panic: mangled configurations and environments
//! always end in exit 0 or a CNI error object with exit 1.

mod common;

use std::path::Path;

use common::PLUGIN;
use serde_json::json;
use weft_cni::invoke::{run_command, Call};

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[test]
fn mangled_input_never_panics() {
    let base = json!({
        "cniVersion": "1.1.0", "name": "fuzz", "type": "weft-cni", "bridge": "wtfz0", "mtu": 1500,
        "ipMasq": true, "ipam": {"ranges": [[{"subnet": "10.91.0.0/24", "rangeStart": "10.91.0.10"}]],
        "routes": [{"dst": "0.0.0.0/0"}], "dataDir": std::env::temp_dir().join(format!("wt-fuzz-{}", std::process::id()))},
        "runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 2}], "ips": ["10.91.0.20"], "mac": "0a:00:00:00:00:01"},
        "prevResult": {"ips": [{"address": "10.91.0.20/24"}], "interfaces": [{"name": "eth0", "sandbox": "/x"}]},
    })
    .to_string()
    .into_bytes();
    let weird = [
        "",
        "null",
        "-1",
        "1e999",
        "\"\"",
        "[]",
        "{}",
        "\"../../x\"",
        "\"10.0.0.0/33\"",
        "\"fd00::/200\"",
        "true",
        "99999999999",
        "\"\\u0000\"",
        "\"1.1.0\"",
        "\"0.0.0.0/0\"",
    ];
    let commands = ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "add", ""];
    let mut rng = Rng(0x5eed_cafe_f00d);
    for round in 0..300 {
        let mut input = base.clone();
        match rng.next() % 4 {
            0 => {
                // Flip bytes.
                for _ in 0..(1 + rng.next() % 4) {
                    let i = (rng.next() as usize) % input.len();
                    input[i] = (rng.next() % 256) as u8;
                }
            }
            1 => input.truncate((rng.next() as usize) % input.len()),
            _ => {
                // Replace a value after a random ':' with a weird one.
                let text = String::from_utf8_lossy(&input).into_owned();
                let colons: Vec<usize> = text.match_indices(':').map(|(i, _)| i).collect();
                let at = colons[(rng.next() as usize) % colons.len()] + 1;
                let end = text[at..]
                    .find([',', '}', ']'])
                    .map(|e| at + e)
                    .unwrap_or(text.len());
                input = format!("{}{}{}", &text[..at], rng.pick(&weird), &text[end..]).into_bytes();
            }
        }
        let mut call = Call::new(Path::new(PLUGIN), rng.pick(&commands));
        let ids = ["fz", "", "a b", "x;y", "-bad"];
        let ifnames = ["eth0", "", "a/b", "0123456789abcdefg", "."];
        call.container_id = rng.pick(&ids);
        call.ifname = rng.pick(&ifnames);
        let netns = [
            Path::new("/run/netns/wt-fuzz-missing"),
            Path::new("/etc/passwd"),
            Path::new(""),
        ];
        call.netns = Some(netns[(rng.next() % 3) as usize]);
        call.args = rng.pick(&["", "IP=1.2.3.4", "IP=x", "=;=", "IgnoreUnknown=1;A=B"]);
        let r = run_command(call.command(), &input).unwrap();
        match r.exit {
            Some(0) => {}
            Some(1) => assert!(
                r.code().is_some() && r.json["msg"].as_str().is_some_and(|m| !m.is_empty()),
                "round {round}: exit 1 without an error object: {}",
                r.stdout
            ),
            other => panic!(
                "round {round}: exit {other:?} (panic or signal) on input {:?}: {}",
                String::from_utf8_lossy(&input),
                r.stderr
            ),
        }
    }
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("wt-fuzz-{}", std::process::id())),
    );
}
