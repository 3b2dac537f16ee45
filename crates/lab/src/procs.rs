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
    spawn_with_env(ns, program, args, &[], owner, log)
}

/// [`spawn`], with `env` added to the process's environment.
pub fn spawn_with_env(
    ns: Option<&NetNs>,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
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
        .envs(env.iter().copied())
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

/// The PIDs of every live process whose owner tag starts with `prefix`
/// (e.g. `<lab>/` for a whole lab), found in /proc rather than in the
/// lab's records, which a crash or a deleted store can leave incomplete.
pub fn owned_by(prefix: &str) -> Vec<u32> {
    tagged()
        .into_iter()
        .filter(|(_, owner)| owner.starts_with(prefix))
        .map(|(pid, _)| pid)
        .collect()
}

/// The owner tags of every live tagged process (e.g. to find the labs
/// whose directory is gone but whose processes are not).
pub fn owners() -> Vec<String> {
    tagged().into_iter().map(|(_, owner)| owner).collect()
}

/// Every live process carrying an owner tag, with the tag.
fn tagged() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let tag = format!("{OWNER_ENV}=");
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let owner = env
                .split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(tag.as_bytes()))?;
            Some((pid, String::from_utf8_lossy(owner).into_owned()))
        })
        .filter(|(pid, _)| !is_zombie(*pid))
        .collect()
}

/// Stops every process whose owner tag starts with `prefix`: SIGTERM to
/// all, SIGKILL to those still there after `grace`. Processes that a
/// stopped one started meanwhile are caught by a second pass. Returns how
/// many were signalled.
pub fn stop_owned(prefix: &str, grace: Duration) -> usize {
    let mut signalled = 0;
    for _ in 0..2 {
        let pids = owned_by(prefix);
        if pids.is_empty() {
            break;
        }
        signalled += pids.len();
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !owned_by(prefix).is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in owned_by(prefix) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
    signalled
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_found_and_stopped_by_their_owner_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let prefix = format!("procs-test-{}/", std::process::id());
        let sleep = Path::new("/bin/sleep");
        let args = vec!["30".to_string()];
        let a = spawn(None, sleep, &args, &format!("{prefix}a"), &log).unwrap();
        let b = spawn(None, sleep, &args, &format!("{prefix}pod/x/b"), &log).unwrap();
        // Another owner (unique too: test runs may overlap on one machine).
        let other_owner = format!("procs-other-{}/a", std::process::id());
        let other = spawn(None, sleep, &args, &other_owner, &log).unwrap();
        let mut found = owned_by(&prefix);
        found.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(found, want);
        assert_eq!(owned_by(&format!("{prefix}pod/")), vec![b]);
        assert!(owners().contains(&other_owner), "{:?}", owners());
        assert_eq!(stop_owned(&prefix, Duration::from_secs(2)), 2);
        assert!(owned_by(&prefix).is_empty());
        // Left alone (read again briefly: a CI run once saw it not yet
        // readable, cause unknown).
        let alive = (0..100).any(|_| {
            is_ours(other, &other_owner) || {
                std::thread::sleep(Duration::from_millis(20));
                false
            }
        });
        assert!(
            alive,
            "the other owner's process was stopped or is unreadable"
        );
        assert!(stop(other, &other_owner, Duration::from_secs(2)));
    }
}
