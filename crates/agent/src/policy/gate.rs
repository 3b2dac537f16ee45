//! The agent's side of weft-cni's pod-start gate
//! (`weft_cni::policy_gate`): a Unix socket where each ADD asks, with the
//! new pod's name and addresses, to be answered once the pod's rules are
//! in place. This module owns the socket and the exchange; when to answer
//! is the enforcement loop's decision.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use weft_cni::policy_gate::{Answer, Request};

/// How long a request may take to arrive once connected.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new pod may wait for the agent to see it (weft-cni gives
/// up after `weft_cni::policy_gate::ANSWER_TIMEOUT`, which is longer).
pub const PATIENCE: Duration = Duration::from_secs(5);
/// A pod has one address per family; more is not a pod.
const MAX_ADDRESSES: usize = 2;

/// One pod waiting for its rules.
pub struct Asked {
    /// `namespace/name`, the pod's cache key.
    pub key: String,
    /// The pod's UID, when the runtime gave it.
    pub uid: Option<String>,
    pub ips: Vec<IpAddr>,
    pub deadline: Instant,
    answer: oneshot::Sender<Answer>,
}

impl Asked {
    /// Lets the pod start.
    pub fn admit(self) {
        let _ = self.answer.send(Answer::default());
    }

    /// A request as the loop sees it, and where its answer goes.
    #[cfg(test)]
    pub fn new(key: &str, uid: Option<&str>, ips: &[&str]) -> (Asked, oneshot::Receiver<Answer>) {
        let (answer, answered) = oneshot::channel();
        let asked = Asked {
            key: key.into(),
            uid: uid.map(String::from),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            deadline: Instant::now() + PATIENCE,
            answer,
        };
        (asked, answered)
    }

    /// Fails its ADD (weft-cni turns this into "try again later").
    pub fn refuse(self, why: String) {
        let _ = self.answer.send(Answer { error: Some(why) });
    }
}

pub struct Gate {
    listener: UnixListener,
    /// Where the addresses weft-cni reported are kept across restarts,
    /// and what was last kept there.
    started_file: PathBuf,
    kept: Started,
    asked_tx: mpsc::UnboundedSender<Asked>,
    asked: mpsc::UnboundedReceiver<Asked>,
}

impl Gate {
    /// Listens at `path` (a socket left by an earlier run is replaced);
    /// only root may connect.
    pub fn bind(path: &Path) -> std::io::Result<Gate> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // A socket left by a run that ended is replaced; one that answers
        // belongs to an agent still running, which keeps it.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another agent answers there; stop it, or give this one another --policy-socket",
            ));
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let (asked_tx, asked) = mpsc::unbounded_channel();
        let started_file = path.with_extension("started.json");
        let kept = load_started(&started_file);
        Ok(Gate {
            listener,
            started_file,
            kept,
            asked_tx,
            asked,
        })
    }

    /// The addresses of started pods kept by the agent's previous run:
    /// a restart between a pod's ADD and its status does not lose them.
    pub fn started(&self) -> Started {
        self.kept.clone()
    }

    /// Keeps `started` for the next run (written when it changed).
    pub fn keep(&mut self, started: &Started) {
        if *started == self.kept {
            return;
        }
        let text = serde_json::to_vec(started).expect("addresses always serialize");
        match crate::files::write_atomically(&self.started_file, &text) {
            Ok(()) => self.kept = started.clone(),
            Err(e) => tracing::warn!(
                error = %e,
                file = %self.started_file.display(),
                "cannot keep the addresses of starting pods; a restart now forgets them until their status shows them"
            ),
        }
    }

    /// The next valid request (cancel-safe: connections accepted meanwhile
    /// are read by their own tasks).
    pub async fn next(&mut self) -> Asked {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, self.asked_tx.clone()));
                    }
                    Err(e) => tracing::warn!(error = %e, "accepting a pod-start request failed"),
                },
                Some(asked) = self.asked.recv() => return asked,
            }
        }
    }
}

/// Reads one request, hands it over and writes the answer it gets (an
/// error when the loop went away without answering).
async fn serve(stream: UnixStream, asked: mpsc::UnboundedSender<Asked>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // A pod's name and addresses fit well within this.
    let mut reader = BufReader::new(read.take(4096));
    let answer = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => match parse(&line) {
            Ok(request) => wait(request, &asked).await,
            Err(why) => Answer { error: Some(why) },
        },
        Ok(Err(e)) => Answer {
            error: Some(format!("cannot read the request: {e}")),
        },
        Err(_) => Answer {
            error: Some(format!("no request within {READ_TIMEOUT:?}")),
        },
    };
    if let Some(error) = &answer.error {
        tracing::warn!(%error, "a pod may not start yet");
    }
    let mut text = serde_json::to_string(&answer).expect("an answer always serializes");
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

async fn wait(request: Request, asked: &mpsc::UnboundedSender<Asked>) -> Answer {
    let (answer, answered) = oneshot::channel();
    let sent = asked.send(Asked {
        key: format!("{}/{}", request.namespace, request.name),
        uid: request.uid,
        ips: request.ips,
        deadline: Instant::now() + PATIENCE,
        answer,
    });
    if sent.is_err() {
        return restarting();
    }
    answered.await.unwrap_or_else(|_| restarting())
}

fn restarting() -> Answer {
    Answer {
        error: Some("NetworkPolicy enforcement is restarting".into()),
    }
}

/// Started pods' addresses by `namespace/name`.
pub type Started = BTreeMap<String, Vec<IpAddr>>;

/// What a previous run kept; entries that are not a pod's name and one or
/// two addresses are dropped.
fn load_started(path: &Path) -> Started {
    let Ok(text) = std::fs::read(path) else {
        return Started::new();
    };
    let kept: Started = serde_json::from_slice(&text).unwrap_or_else(|e| {
        tracing::warn!(error = %e, file = %path.display(), "ignoring unreadable addresses of starting pods");
        Started::new()
    });
    kept.into_iter()
        .filter(|(key, ips)| {
            let valid = key.split_once('/').is_some_and(|(ns, name)| {
                weft_validation::names::dns1123_label(ns).is_ok()
                    && weft_validation::names::dns1123_subdomain(name).is_ok()
            });
            valid && !ips.is_empty() && ips.len() <= MAX_ADDRESSES
        })
        .collect()
}

/// A request as weft-cni sends it, its names checked as the API checks
/// them before they reach a log or a map.
fn parse(line: &str) -> Result<Request, String> {
    let request: Request =
        serde_json::from_str(line).map_err(|e| format!("the request is not valid: {e}"))?;
    weft_validation::names::dns1123_label(&request.namespace)
        .map_err(|e| format!("namespace {:?}: {e}", request.namespace))?;
    weft_validation::names::dns1123_subdomain(&request.name)
        .map_err(|e| format!("pod name {:?}: {e}", request.name))?;
    if request.ips.is_empty() || request.ips.len() > MAX_ADDRESSES {
        return Err(format!(
            "a pod has one or two addresses, not {}",
            request.ips.len()
        ));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_like_the_api_checks_names() {
        let ok = r#"{"namespace":"prod","name":"db-0","ips":["10.244.1.5"]}"#;
        assert_eq!(parse(ok).unwrap().ips.len(), 1);
        for bad in [
            r#"{"namespace":"../etc","name":"db","ips":["10.244.1.5"]}"#,
            r#"{"namespace":"prod","name":"DB","ips":["10.244.1.5"]}"#,
            r#"{"namespace":"prod","name":"db","ips":[]}"#,
            r#"{"namespace":"prod","name":"db","ips":["10.0.0.1","10.0.0.2","10.0.0.3"]}"#,
            "not json",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }

    fn db_request() -> weft_cni::policy_gate::Request {
        weft_cni::policy_gate::Request {
            namespace: "prod".into(),
            name: "db".into(),
            uid: Some("0b7c-uid".into()),
            ips: vec!["10.244.1.5".parse().unwrap()],
        }
    }

    #[tokio::test]
    async fn a_socket_another_agent_answers_on_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.sock");
        let first = Gate::bind(&path).unwrap();
        let err = Gate::bind(&path)
            .err()
            .expect("a second agent took the socket");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        drop(first);
        Gate::bind(&path).expect("a socket nobody answers on is replaced");
    }

    #[tokio::test]
    async fn started_addresses_outlive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.sock");
        let mut gate = Gate::bind(&path).unwrap();
        assert!(gate.started().is_empty());
        let started: Started =
            [("prod/db".to_string(), vec!["10.244.1.5".parse().unwrap()])].into();
        gate.keep(&started);
        drop(gate);
        assert_eq!(Gate::bind(&path).unwrap().started(), started);
        // What is not a pod and its addresses is dropped.
        std::fs::write(
            dir.path().join("policy.started.json"),
            r#"{"prod/db": ["10.244.1.5"], "../x": ["10.0.0.1"], "prod/none": []}"#,
        )
        .unwrap();
        assert_eq!(Gate::bind(&path).unwrap().started(), started);
    }

    #[tokio::test]
    async fn a_request_is_answered_when_the_loop_decides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.sock");
        let mut gate = Gate::bind(&path).unwrap();
        let request = db_request();
        let client = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                weft_cni::policy_gate::ask(&path, &request, Duration::from_secs(5))
            })
        };
        let asked = gate.next().await;
        assert_eq!(asked.key, "prod/db");
        assert_eq!(asked.uid.as_deref(), Some("0b7c-uid"));
        asked.admit();
        client.await.unwrap().unwrap();

        // Refused, and the loop gone without answering: both refuse ADD.
        for refuse in [true, false] {
            let path = path.clone();
            let client = tokio::task::spawn_blocking(move || {
                weft_cni::policy_gate::ask(&path, &db_request(), Duration::from_secs(5))
            });
            let asked = gate.next().await;
            if refuse {
                asked.refuse("not yet".into());
            } else {
                drop(asked);
            }
            let err = client.await.unwrap().unwrap_err();
            assert!(
                err.msg
                    .contains(if refuse { "not yet" } else { "restarting" }),
                "{err}"
            );
        }
    }
}
