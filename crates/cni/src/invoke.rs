//! The runtime's side of CNI: executing a plugin binary with the `CNI_*`
//! environment and the configuration on stdin, exactly as containerd or
//! CRI-O do, and reading back its result or error object. Used by `weft`'s
//! demo and lab, the benchmarks and the tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use weft_datapath::NetNs;

/// What a plugin answered.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The process exit code (`None` when killed by a signal).
    pub exit: Option<i32>,
    /// stdout as JSON (`Null` when empty or not JSON).
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    pub fn ok(&self) -> bool {
        self.exit == Some(0)
    }

    /// The CNI error code, when the plugin failed with an error object.
    pub fn code(&self) -> Option<u64> {
        self.json["code"].as_u64()
    }
}

/// One plugin invocation.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub plugin: &'a Path,
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: &'a str,
    /// The namespace the plugin itself runs in (a lab node); `None` = ours.
    pub host: Option<&'a NetNs>,
}

impl<'a> Call<'a> {
    pub fn new(plugin: &'a Path, command: &'a str) -> Self {
        Self {
            plugin,
            command,
            container_id: "",
            netns: None,
            ifname: "eth0",
            args: "",
            host: None,
        }
    }

    /// The process, ready to spawn, with stdin piped.
    pub fn command(&self) -> Command {
        let mut cmd = match self.host {
            Some(ns) => ns.command(self.plugin),
            None => Command::new(self.plugin),
        };
        let dir: PathBuf = self
            .plugin
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", self.command)
            .env("CNI_PATH", dir)
            .env("CNI_IFNAME", self.ifname)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !self.container_id.is_empty() {
            cmd.env("CNI_CONTAINERID", self.container_id);
        }
        if let Some(ns) = self.netns {
            cmd.env("CNI_NETNS", ns);
        }
        if !self.args.is_empty() {
            cmd.env("CNI_ARGS", self.args);
        }
        cmd
    }

    /// Runs the plugin with `config` on stdin and waits for its answer.
    pub fn run(&self, config: &Value) -> std::io::Result<Reply> {
        run_command(self.command(), config.to_string().as_bytes())
    }
}

/// Spawns `cmd`, writes `stdin`, collects the reply.
pub fn run_command(mut cmd: Command, stdin: &[u8]) -> std::io::Result<Reply> {
    let mut child = cmd.spawn()?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin)?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(Reply {
        exit: out.status.code(),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
