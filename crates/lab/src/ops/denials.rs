//! `weft lab denials`: the denied connections the nodes' agents logged,
//! each already explained by its agent, oldest first, optionally
//! following new ones. It reads the agents' logs and changes nothing.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::layout::Layout;

/// How the agents tag denial lines (`weft_agent::policy::denials::TARGET`).
const MARK: &str = " weft::denied: ";

/// How often `--follow` looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

pub struct DenialsOptions {
    /// One node's, or every node's.
    pub node: Option<String>,
    pub follow: bool,
}

/// One agent log and how far it has been read.
struct Source {
    node: String,
    path: PathBuf,
    read: u64,
}

impl Source {
    /// The denial lines added since the last read, as `(timestamp, line)`.
    fn new_lines(&mut self) -> Vec<(String, String)> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.read {
            // A restarted agent started a new log.
            self.read = 0;
        }
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.read)).is_err() || file.read_to_string(&mut text).is_err()
        {
            return Vec::new();
        }
        // Only whole lines; a partial last line is read next time.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        self.read += complete as u64;
        text[..complete]
            .lines()
            .filter_map(|line| {
                let (head, message) = line.split_once(MARK)?;
                let timestamp = head.split_whitespace().next().unwrap_or_default();
                Some((
                    timestamp.to_string(),
                    format!("{}  {timestamp}  {message}", self.node),
                ))
            })
            .collect()
    }
}

/// Prints (through `print`) the denials logged so far, merged across the
/// nodes by time; with `follow`, then every new one until interrupted.
pub fn denials(name: &str, opts: &DenialsOptions, print: &mut dyn FnMut(&str)) -> Result<()> {
    let layout = Layout::new(name)?;
    let state = layout.load()?;
    if let Some(node) = &opts.node {
        if !state.nodes.iter().any(|n| &n.name == node) {
            let known: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
            bail!(
                "lab {name} has no node {node}; its nodes: {}",
                known.join(", ")
            );
        }
    }
    let mut sources: Vec<Source> = state
        .nodes
        .iter()
        .filter(|n| opts.node.as_ref().is_none_or(|only| *only == n.name))
        .map(|n| Source {
            node: n.name.clone(),
            path: layout.node_dir(&n.name).join("agent.log"),
            read: 0,
        })
        .collect();
    loop {
        let mut lines: Vec<(String, String)> =
            sources.iter_mut().flat_map(Source::new_lines).collect();
        lines.sort();
        for (_, line) in lines {
            print(&line);
        }
        if !opts.follow {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}
