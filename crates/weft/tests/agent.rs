//! `weft agent` as an operator runs it: refused command lines, and (as
//! root) one agent in a network namespace of the test's own with a veth
//! pair as its underlay, removed by `Drop` even when the test fails.

use std::process::{Command, Output};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `weft agent --node n ARGS` with a net-conf path that does not exist,
/// so it fails either on its command line or, past it, on net-conf.json.
fn agent_without_net_conf(args: &[&str]) -> Output {
    Command::new(WEFT)
        .args(["agent", "--node", "n", "--net-conf", NO_NET_CONF])
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running weft")
}

const NO_NET_CONF: &str = "/nonexistent/weft/net-conf.json";

/// `weft agent --node n ARGS`, which must be refused before it touches
/// anything.
fn refused(args: &[&str]) -> Output {
    let out = agent_without_net_conf(args);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(
        !text(&out.stderr).contains(NO_NET_CONF),
        "{args:?} got past the command line: {}",
        text(&out.stderr)
    );
    out
}

#[test]
fn zero_and_nonsensical_periods_are_refused_naming_the_flag_and_range() {
    for (flag, value, range) in [
        ("--resync-ms", "0", "100..=3600000"),
        ("--resync-ms", "99", "100..=3600000"),
        ("--resync-ms", "3600001", "100..=3600000"),
        ("--heartbeat-ms", "0", "100..=60000"),
        ("--heartbeat-ms", "18446744073709551615", "100..=60000"),
        ("--watch-ms", "0", "1..=60000"),
        ("--lease-ttl", "0", "1..=31536000"),
        ("--lease-ttl", "31536001", "1..=31536000"),
        ("--proxy-full-resync-s", "0", "1..=604800"),
        (
            "--proxy-full-resync-s",
            "18446744073709551615",
            "1..=604800",
        ),
    ] {
        let out = refused(&[flag, value]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(range),
            "{flag} {value}: {stderr}"
        );
    }
}

#[test]
fn a_lease_that_would_expire_between_renewals_is_refused() {
    // Renewal happens on a resync pass once half the TTL is gone, so a TTL
    // shorter than four passes could lapse (and 0 did, with a lost-lease error).
    let out = refused(&["--lease-ttl", "1", "--resync-ms", "300"]);
    let stderr = text(&out.stderr);
    for word in ["--lease-ttl 1", "--resync-ms 300", "at least 4 ×"] {
        assert!(stderr.contains(word), "{word:?} missing: {stderr}");
    }
    // The shortest TTL allowed for a period passes the command line.
    let out = agent_without_net_conf(&["--lease-ttl", "1", "--resync-ms", "250"]);
    assert!(
        text(&out.stderr).contains(NO_NET_CONF),
        "{}",
        text(&out.stderr)
    );
}
