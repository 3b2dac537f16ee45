//! The client side of lab reachability matrices (`weft lab probe`): one
//! exchange with a netexec server — HTTP `GET /hostname` (or another path)
//! over TCP, or the `hostname` (or `clientip`) command over UDP — classified
//! as answered, refused or timed out.
//!
//! It owns only the short-lived sockets of one exchange. It must not spawn
//! threads or use a multi-thread runtime: the caller chooses the network
//! namespace by moving its own thread into it, and sockets take the namespace
//! of the thread that creates them, so every socket is made in the calling task.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A response larger than this is refused rather than buffered; netexec
/// answers are a few dozen bytes.
const MAX_RESPONSE: usize = 1024 * 1024;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// What a probe asks by default: who answers.
pub const HOSTNAME_PATH: &str = "/hostname";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// `Eq` is not derived: `millis` is a float.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok { answer: String, millis: f64 },
    Refused,
    Timeout,
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{target} refused the connection")]
    Refused { target: SocketAddr },
    #[error("no answer from {target} within {timeout:?}")]
    Timeout {
        target: SocketAddr,
        timeout: Duration,
    },
    #[error("cannot {action} {target}: {source}")]
    Io {
        action: &'static str,
        target: SocketAddr,
        source: io::Error,
    },
    #[error("cannot request {path:?}: an HTTP path starts with '/' and has no spaces or control characters")]
    InvalidPath { path: String },
    #[error("{path:?} has no UDP equivalent: over UDP netexec answers /hostname and /clientip")]
    NoUdpCommand { path: String },
    #[error("{target} answered HTTP {status}")]
    Status { target: SocketAddr, status: u16 },
    #[error("bad HTTP response from {target}: {reason}")]
    BadResponse { target: SocketAddr, reason: String },
}

impl ProbeError {
    /// A refusal is a verdict (nothing listens, or a rule rejects), not a
    /// failure of the probe, so it gets its own variant: a TCP reset, or an
    /// ICMP port, host or administratively-prohibited unreachable (what
    /// reject rules send), which the kernel reports at once.
    fn io(action: &'static str, target: SocketAddr) -> impl Fn(io::Error) -> ProbeError {
        move |source| match source.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::HostUnreachable => {
                ProbeError::Refused { target }
            }
            _ => ProbeError::Io {
                action,
                target,
                source,
            },
        }
    }
}

/// TCP: `GET /hostname` and the body of a 200 answer. UDP: `hostname` and the
/// one datagram that comes back. All within `timeout` (the lab uses 1 s).
pub async fn probe(target: SocketAddr, protocol: Protocol, timeout: Duration) -> Outcome {
    attempt(target, protocol, HOSTNAME_PATH, timeout).await
}

/// One attempt on a new connection (or UDP socket): over TCP `GET path` and
/// the body of a 200 answer; over UDP the netexec command of the same name
/// (see [`check_request`]) and the datagram that comes back.
pub async fn attempt(
    target: SocketAddr,
    protocol: Protocol,
    path: &str,
    timeout: Duration,
) -> Outcome {
    let started = Instant::now();
    let answer = match protocol {
        Protocol::Tcp => http_answer(target, path, timeout).await,
        Protocol::Udp => match udp_command(path) {
            Ok(command) => within(target, timeout, udp_exchange(target, command.as_bytes())).await,
            Err(e) => Err(e),
        },
    };
    match answer {
        Ok(answer) => Outcome::Ok {
            answer,
            millis: started.elapsed().as_secs_f64() * 1000.0,
        },
        Err(ProbeError::Refused { .. }) => Outcome::Refused,
        Err(ProbeError::Timeout { .. }) => Outcome::Timeout,
        Err(other) => Outcome::Error(other.to_string()),
    }
}

/// [`probe`] from synchronous code, on a current-thread runtime built here so
/// the sockets live in the namespace the calling thread has entered. Must not
/// be called from inside a tokio runtime.
pub fn probe_blocking(target: SocketAddr, protocol: Protocol, timeout: Duration) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(probe(target, protocol, timeout)),
        Err(e) => Outcome::Error(format!("cannot start the probe runtime: {e}")),
    }
}

/// `GET path` with `Connection: close`; the status code and the body
/// (invalid UTF-8 replaced), all within `timeout`.
pub async fn http_get(
    target: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), ProbeError> {
    if !valid_path(path) {
        return Err(ProbeError::InvalidPath {
            path: path.to_string(),
        });
    }
    within(target, timeout, http_exchange(target, path)).await
}

/// Whether [`attempt`] can ask `path` over `protocol`.
pub fn check_request(protocol: Protocol, path: &str) -> Result<(), ProbeError> {
    match protocol {
        Protocol::Tcp if valid_path(path) => Ok(()),
        Protocol::Tcp => Err(ProbeError::InvalidPath { path: path.into() }),
        Protocol::Udp => udp_command(path).map(|_| ()),
    }
}

/// The UDP netexec command that asks what `path` asks over HTTP.
fn udp_command(path: &str) -> Result<&'static str, ProbeError> {
    match path {
        "/hostname" => Ok("hostname"),
        "/clientip" => Ok("clientip"),
        _ => Err(ProbeError::NoUdpCommand { path: path.into() }),
    }
}

async fn http_answer(
    target: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<String, ProbeError> {
    match http_get(target, path, timeout).await? {
        (200, body) => Ok(body),
        (status, _) => Err(ProbeError::Status { target, status }),
    }
}

/// Runs `exchange`, turning an expired `timeout` into [`ProbeError::Timeout`].
async fn within<T>(
    target: SocketAddr,
    timeout: Duration,
    exchange: impl Future<Output = Result<T, ProbeError>>,
) -> Result<T, ProbeError> {
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(ProbeError::Timeout { target, timeout }))
}

/// A path that cannot smuggle extra request lines or break the request line.
fn valid_path(path: &str) -> bool {
    path.starts_with('/')
        && !path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

async fn http_exchange(target: SocketAddr, path: &str) -> Result<(u16, String), ProbeError> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(ProbeError::io("connect to", target))?;
    // The Host header is required by HTTP/1.1; netexec ignores its value.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(ProbeError::io("send to", target))?;
    // `Connection: close` makes the server end the response with EOF.
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(ProbeError::io("read from", target))?;
    if raw.len() > MAX_RESPONSE {
        return Err(ProbeError::BadResponse {
            target,
            reason: format!("larger than {MAX_RESPONSE} bytes"),
        });
    }
    parse_response(&raw).map_err(|reason| ProbeError::BadResponse { target, reason })
}

/// Status and body of a complete response, the body cut to `Content-Length`.
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the headers never end")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = parse_status_line(lines.next().unwrap_or_default())?;
    let mut body = &raw[end + 4..];
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line {line:?} has no ':'"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length: usize = value
                .parse()
                .map_err(|_| format!("Content-Length {value:?} is not a number"))?;
            body = body
                .get(..length)
                .ok_or_else(|| format!("the body is shorter than Content-Length {length}"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value != "identity" {
            return Err(format!("Transfer-Encoding {value:?} is not supported"));
        }
    }
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status_line(line: &str) -> Result<u16, String> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let well_formed = version.starts_with("HTTP/") && code.len() == 3;
    code.parse()
        .ok()
        .filter(|_| well_formed)
        .ok_or_else(|| format!("bad status line {line:?}"))
}

async fn udp_exchange(target: SocketAddr, message: &[u8]) -> Result<String, ProbeError> {
    let io = |action| ProbeError::io(action, target);
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(io("open a UDP socket for"))?;
    // Connected, so an ICMP port unreachable comes back as ECONNREFUSED
    // instead of leaving the probe to wait for its timeout.
    socket.connect(target).await.map_err(io("connect to"))?;
    socket.send(message).await.map_err(io("send to"))?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let n = socket.recv(&mut buf).await.map_err(io("receive from"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netexec::spawn_test_server;

    const TIMEOUT: Duration = Duration::from_secs(1);
    /// Short, for the cases that are expected to time out.
    const SHORT: Duration = Duration::from_millis(200);

    fn v4(port: u16) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, port).into()
    }

    fn v6(port: u16) -> SocketAddr {
        (Ipv6Addr::LOCALHOST, port).into()
    }

    fn assert_answer(outcome: Outcome, expected: &str) {
        match outcome {
            Outcome::Ok { answer, millis } => {
                assert_eq!(answer, expected);
                assert!((0.0..1000.0).contains(&millis), "{millis}");
            }
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    /// A port on which nothing listens any more.
    fn closed_tcp_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn closed_udp_port() -> u16 {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn probes_answered_on_both_families() {
        let (http, udp) = spawn_test_server("pod-p").await;
        for (port, protocol) in [(http, Protocol::Tcp), (udp, Protocol::Udp)] {
            assert_answer(probe(v4(port), protocol, TIMEOUT).await, "pod-p");
            assert_answer(probe(v6(port), protocol, TIMEOUT).await, "pod-p");
        }
    }

    #[tokio::test]
    async fn closed_ports_are_refused() {
        let tcp = closed_tcp_port();
        assert_eq!(
            probe(v4(tcp), Protocol::Tcp, TIMEOUT).await,
            Outcome::Refused
        );
        assert_eq!(
            probe(v6(tcp), Protocol::Tcp, TIMEOUT).await,
            Outcome::Refused
        );
        let udp = closed_udp_port();
        assert_eq!(
            probe(v4(udp), Protocol::Udp, TIMEOUT).await,
            Outcome::Refused
        );
    }

    #[tokio::test]
    async fn silent_servers_time_out() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = silent.local_addr().unwrap();
        assert_eq!(probe(target, Protocol::Udp, SHORT).await, Outcome::Timeout);
        // The kernel completes the handshake from the backlog, but nobody
        // ever accepts and answers.
        let never_accepts = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = never_accepts.local_addr().unwrap();
        assert_eq!(probe(target, Protocol::Tcp, SHORT).await, Outcome::Timeout);
        let err = http_get(target, "/hostname", SHORT).await.unwrap_err();
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("no answer from {target} within 200ms")
        );
    }

    #[tokio::test]
    async fn http_get_other_paths() {
        let (http, _) = spawn_test_server("pod-p").await;
        let (status, body) = http_get(v4(http), "/clientip", TIMEOUT).await.unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with("127.0.0.1:"), "{body}");
        let (status, body) = http_get(v6(http), "/clientip", TIMEOUT).await.unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with("[::1]:"), "{body}");
        let answer = http_get(v4(http), "/echo?msg=hi%21", TIMEOUT)
            .await
            .unwrap();
        assert_eq!(answer, (200, "hi!".to_string()));
        let (status, _) = http_get(v4(http), "/shell", TIMEOUT).await.unwrap();
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn attempts_ask_other_paths_over_both_protocols() {
        let (http, udp) = spawn_test_server("pod-p").await;
        for (port, protocol) in [(http, Protocol::Tcp), (udp, Protocol::Udp)] {
            match attempt(v4(port), protocol, "/clientip", TIMEOUT).await {
                Outcome::Ok { answer, .. } => assert!(answer.starts_with("127.0.0.1:"), "{answer}"),
                other => panic!("{protocol:?}: {other:?}"),
            }
        }
        assert_answer(
            attempt(v4(http), Protocol::Tcp, "/healthz", TIMEOUT).await,
            "ok",
        );
        assert!(matches!(
            attempt(v4(http), Protocol::Tcp, "/nothing", TIMEOUT).await,
            Outcome::Error(e) if e.contains("HTTP 404")
        ));
        assert!(matches!(
            attempt(v4(udp), Protocol::Udp, "/healthz", TIMEOUT).await,
            Outcome::Error(e) if e.contains("no UDP equivalent")
        ));
        assert!(check_request(Protocol::Tcp, "/healthz").is_ok());
        assert!(check_request(Protocol::Tcp, "healthz").is_err());
        assert!(check_request(Protocol::Udp, "/clientip").is_ok());
        assert!(check_request(Protocol::Udp, "/echo?msg=x").is_err());
    }

    #[test]
    fn unreachable_hosts_count_as_refused() {
        let target = v4(80);
        let refused = ProbeError::io("connect to", target);
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::HostUnreachable,
        ] {
            assert!(
                matches!(refused(kind.into()), ProbeError::Refused { .. }),
                "{kind:?}"
            );
        }
        assert!(matches!(
            refused(io::ErrorKind::NetworkUnreachable.into()),
            ProbeError::Io { .. }
        ));
    }

    #[tokio::test]
    async fn http_get_rejects_paths_that_would_break_the_request() {
        for path in ["hostname", "/a b", "/a\r\nX: y", ""] {
            let err = http_get(v4(1), path, TIMEOUT).await.unwrap_err();
            assert!(matches!(err, ProbeError::InvalidPath { .. }), "{err:?}");
        }
    }

    #[test]
    fn probe_blocking_from_a_plain_thread() {
        let (ports_tx, ports_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        // The server runs on its own thread and runtime, like a lab container.
        let server = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                ports_tx.send(spawn_test_server("pod-q").await).unwrap();
                tokio::task::spawn_blocking(move || stop_rx.recv())
                    .await
                    .unwrap()
            })
        });
        let (http, udp) = ports_rx.recv().unwrap();
        assert_answer(probe_blocking(v4(http), Protocol::Tcp, TIMEOUT), "pod-q");
        assert_answer(probe_blocking(v6(udp), Protocol::Udp, TIMEOUT), "pod-q");
        stop_tx.send(()).unwrap();
        server.join().unwrap().unwrap();
        // The server's runtime is gone, and its sockets with it.
        assert_eq!(
            probe_blocking(v4(http), Protocol::Tcp, TIMEOUT),
            Outcome::Refused
        );
    }

    #[test]
    fn responses_are_parsed_strictly() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi-and-more";
        assert_eq!(parse_response(ok), Ok((200, "hi".to_string())));
        let no_length = b"HTTP/1.0 404 Not Found\r\n\r\nnot found";
        assert_eq!(
            parse_response(no_length),
            Ok((404, "not found".to_string()))
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            b"HTTP/1.1 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n",
            b"",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
