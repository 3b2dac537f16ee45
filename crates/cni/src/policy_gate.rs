//! The pod-start gate: before ADD answers, weft-cni asks the node's agent
//! to put the new pod's NetworkPolicy in place, so that a pod a policy
//! isolates never runs a container unprotected. The agent knows the pod's
//! labels from its watch but learns its address only here.
//!
//! The exchange, over the Unix socket named by the configuration's
//! `policySocket`: one JSON [`Request`] line, one JSON [`Answer`] line.
//! When the agent cannot be reached or does not answer in time, ADD fails
//! with code 11 ("try again later") and the runtime retries: a pod never
//! starts without its policy. This module owns the wire format and the
//! plugin's side; it must not decide anything about policies.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::CniError;

/// How long ADD waits for the agent (it answers once the rules are
/// written, or after its own shorter wait for the Pod to appear).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod about to start: who it is and its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub namespace: String,
    pub name: String,
    /// The pod's UID (`K8S_POD_UID`), when the runtime gives it: a pod of
    /// the same name that the agent still knows is another pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    pub ips: Vec<IpAddr>,
}

/// The agent's answer: `error` says why the pod's policy is not in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Asks the agent behind `socket` to protect the pod of `request`;
/// returns once it has, or fails with code 11.
pub fn ask(socket: &Path, request: &Request, timeout: Duration) -> Result<(), CniError> {
    let unreachable = |e: std::io::Error| {
        CniError::try_again(format!(
            "the weft agent on this node does not answer at {} (is it running?); the pod \
             starts once the agent has put its NetworkPolicy in place",
            socket.display()
        ))
        .with_details(e)
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    let mut line = serde_json::to_string(request).expect("a request always serializes");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(unreachable)?;
    let answer: Answer = serde_json::from_str(&reply).map_err(|e| {
        CniError::try_again(format!(
            "the weft agent at {} gave an answer weft-cni cannot read: {reply:?}",
            socket.display()
        ))
        .with_details(e)
    })?;
    match answer.error {
        None => Ok(()),
        Some(error) => Err(CniError::try_again(format!(
            "the weft agent has not put the NetworkPolicy of pod {}/{} in place: {error}",
            request.namespace, request.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// Serves one connection with `answer` and returns what was asked.
    fn serve_once(listener: UnixListener, answer: &'static str) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut asked = String::new();
            BufReader::new(&stream).read_line(&mut asked).unwrap();
            (&stream).write_all(answer.as_bytes()).unwrap();
            asked
        })
    }

    fn request() -> Request {
        Request {
            namespace: "prod".into(),
            name: "db".into(),
            uid: Some("0b7c-uid".into()),
            ips: vec!["10.244.1.5".parse().unwrap()],
        }
    }

    #[test]
    fn an_empty_answer_lets_the_pod_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.sock");
        let server = serve_once(UnixListener::bind(&path).unwrap(), "{}\n");
        ask(&path, &request(), Duration::from_secs(5)).unwrap();
        let asked: Request = serde_json::from_str(&server.join().unwrap()).unwrap();
        assert_eq!(asked, request());
    }

    #[test]
    fn a_refusal_or_no_agent_is_try_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.sock");
        let err = ask(&path, &request(), Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.code, crate::spec::ErrorCode::TryAgainLater);
        assert!(err.msg.contains("is it running?"), "{err}");

        let server = serve_once(
            UnixListener::bind(&path).unwrap(),
            "{\"error\":\"pod prod/db is not known yet\"}\n",
        );
        let err = ask(&path, &request(), Duration::from_secs(5)).unwrap_err();
        server.join().unwrap();
        assert_eq!(err.code, crate::spec::ErrorCode::TryAgainLater);
        assert!(err.msg.contains("prod/db is not known yet"), "{err}");
    }

    #[test]
    fn an_agent_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let err = ask(&path, &request(), Duration::from_millis(200)).unwrap_err();
        drop(listener);
        assert_eq!(err.code, crate::spec::ErrorCode::TryAgainLater);
    }
}
