//! Processes the lab starts (agents, containers): started detached inside a
//! namespace with their output in a log file, and tagged with an
//! environment variable naming their owner, so the lab only ever signals a
//! PID after checking that the process really is the one it started.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use weft_datapath::NetNs;

/// The environment variable carrying a process's owner tag.
pub const OWNER_ENV: &str = "WEFT_LAB_OWNER";

/// Starts `program args` inside `ns` (or here), detached from our process
/// group, output appended to `log`; returns its PID.
pub fn spawn(
    ns: Option<&NetNs>,
    program: &Path,
    args: &[String],
    owner: &str,
    log: &Path,
) -> std::io::Result<u32> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = File::options().create(true).append(true).open(log)?;
    let mut cmd = match ns {
        Some(ns) => ns.command(program),
        None => Command::new(program),
    };
    let child = cmd
        .args(args)
        .env(OWNER_ENV, owner)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()?;
    Ok(child.id())
}

/// Whether `pid` is alive and carries `owner`.
pub fn is_ours(pid: u32, owner: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let tag = format!("{OWNER_ENV}={owner}");
    environ.split(|b| *b == 0).any(|kv| kv == tag.as_bytes())
}

/// Stops our process `pid` (SIGTERM, then SIGKILL after `grace`); a PID
/// that is gone or not ours is left alone. Returns whether it was ours.
pub fn stop(pid: u32, owner: &str, grace: Duration) -> bool {
    if !is_ours(pid, owner) {
        return false;
    }
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_ours(pid, owner) || is_zombie(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(target, Signal::SIGKILL);
    true
}

/// Kills our process `pid` at once, as a crash would.
pub fn crash(pid: u32, owner: &str) -> bool {
    if !is_ours(pid, owner) {
        return false;
    }
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
