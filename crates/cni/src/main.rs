//! The `weft-cni` executable: reads the CNI environment and the network
//! configuration on stdin, runs the verb, prints the result (or the spec's
//! error object) on stdout. `weft-cni --reap-link NAME` is the detached
//! helper DEL starts to unregister a retired veth (see `commands::del`).

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use weft_cni::commands;
use weft_cni::spec::{CniError, Env, Version};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(commands::REAP_FLAG) {
        // The detached helper DEL starts; nobody reads its output.
        let ok = argv.get(2).is_some_and(|link| commands::reap(link).is_ok());
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    // stdout carries the result; what the plugin has to tell besides goes to
    // stderr, which runtimes log.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .init();
    let mut stdin = Vec::new();
    let input = std::io::stdin();
    if !input.is_terminal() {
        if let Err(e) = input.lock().read_to_end(&mut stdin) {
            return fail(
                CniError::io("cannot read the network configuration from stdin").with_details(e),
                &stdin,
            );
        }
    }
    let result =
        Env::from_lookup(|k| std::env::var(k).ok()).and_then(|env| commands::run(env, &stdin));
    match result {
        Ok(Some(out)) => print(&out, ExitCode::SUCCESS),
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => fail(e, &stdin),
    }
}

/// Prints the error object in the configuration's version when it is one
/// weft-cni speaks, else in the latest.
fn fail(err: CniError, stdin: &[u8]) -> ExitCode {
    let version = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v["cniVersion"]
                .as_str()
                .and_then(|s| Version::parse(s).ok())
        })
        .unwrap_or(Version::LATEST);
    print(&err.to_json(version.as_str()), ExitCode::from(1))
}

/// Prints the answer. A reader that went away (broken pipe) is not worth a
/// panic: the verb has done its work, and nobody is left to tell.
fn print(answer: &serde_json::Value, code: ExitCode) -> ExitCode {
    let written = writeln!(std::io::stdout().lock(), "{answer}");
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            tracing::error!("cannot write the answer to stdout: {e}");
            ExitCode::FAILURE
        }
        _ => code,
    }
}
