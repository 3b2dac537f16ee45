//! The `weft` binary as a shell pipeline's first command.

mod common;

use std::process::Command;

use common::WEFT;

/// `weft lab status | head` where head has already quit: the reader is gone
/// before the first line is printed.
#[test]
fn a_closed_pipe_ends_weft_quietly() {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(WEFT)
        .args(["lab", "status"])
        .env("RUST_BACKTRACE", "1")
        .stdout(writer)
        .output()
        .expect("running weft");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "not quiet: {stderr}");
    // What a shell reports for a program that SIGPIPE ended, as `cat` would.
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
