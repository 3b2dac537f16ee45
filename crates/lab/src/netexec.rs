//! The built-in test server every lab "container" without a command runs,
//! modelled on Kubernetes' `agnhost netexec`: HTTP on TCP (`/hostname`,
//! `/clientip`, `/echo?msg=`, `/healthz`) and a line protocol on UDP
//! (`hostname`, `echo TEXT`, `clientip`), each port served on IPv4 and IPv6.
//!
//! It owns only its listening sockets and the per-request log lines on stdout
//! (the lab captures a container's stdout as its logs). It must never run
//! commands or touch files: agnhost's `/shell`, `/upload` and `/exit` are
//! deliberately absent, so a lab pod cannot be turned into a shell.

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

/// agnhost's defaults, used when a flag is absent.
const DEFAULT_HTTP_PORT: u16 = 8080;
const DEFAULT_UDP_PORT: u16 = 8081;
/// A request head larger than this is refused rather than buffered.
const MAX_HEAD: usize = 16 * 1024;
/// A client that neither finishes its request nor reads the answer is
/// dropped after this long, so idle connections cannot pile up.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answered connection waits for the client to close.
const LINGER: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetexecConfig {
    pub http_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
    pub hostname: String,
    /// agnhost's `--delay-shutdown`: seconds it keeps serving after
    /// SIGTERM (a pod whose endpoint stays serving while it terminates).
    pub delay_shutdown: u64,
}

/// Serves until the future is dropped. Binds 0.0.0.0 and [::] on every port
/// (one dual-stack socket where the kernel allows it). Fails at once if a
/// port cannot be bound or the config has no port at all.
pub async fn serve(config: NetexecConfig) -> io::Result<()> {
    Bound::bind(&config)?.run(config.hostname.into()).await
}

/// Parses agnhost-style args: `["netexec", "--http-port=8080", "--udp-port=8081"]`,
/// also the `--http-port 8080` and single-dash forms Go's flag package takes.
/// Absent flags get agnhost's defaults (http 8080, udp 8081); a port of `-1`
/// disables that protocol. Other agnhost flags are ignored, so manifests
/// written for agnhost still start.
///
/// Returns `None` if `args[0]` isn't `netexec` or a port value is not a port
/// number: either way the args are not something this server can run. The
/// hostname is left empty for the caller to fill.
pub fn parse_agnhost_args(args: &[String]) -> Option<NetexecConfig> {
    let (command, flags) = args.split_first()?;
    if command != "netexec" {
        return None;
    }
    let mut http_ports = vec![DEFAULT_HTTP_PORT];
    let mut udp_ports = vec![DEFAULT_UDP_PORT];
    let mut delay_shutdown = 0;
    let mut rest = flags.iter();
    while let Some(arg) = rest.next() {
        let Some((name, inline)) = split_flag(arg) else {
            continue;
        };
        if !matches!(name, "http-port" | "udp-port" | "delay-shutdown") {
            continue;
        }
        let value = match inline {
            Some(value) => value,
            None => rest.next()?.as_str(),
        };
        // Go's flag package lets the last occurrence win.
        match name {
            "http-port" => http_ports = parse_port(value)?,
            "udp-port" => udp_ports = parse_port(value)?,
            _ => delay_shutdown = value.parse().ok()?,
        }
    }
    Some(NetexecConfig {
        http_ports,
        udp_ports,
        hostname: String::new(),
        delay_shutdown,
    })
}

/// `--name=value` → (name, Some(value)); `-name` → (name, None); a non-flag → None.
fn split_flag(arg: &str) -> Option<(&str, Option<&str>)> {
    let body = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    Some(match body.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (body, None),
    })
}

/// A port list from a flag value: `-1` means "disabled", as in agnhost.
fn parse_port(value: &str) -> Option<Vec<u16>> {
    if value == "-1" {
        return Some(Vec::new());
    }
    value.parse().ok().map(|port| vec![port])
}

/// Every socket of a config, bound before serving starts so that a busy port
/// is reported by `serve` instead of being discovered by the first client.
pub(crate) struct Bound {
    listeners: Vec<TcpListener>,
    datagrams: Vec<UdpSocket>,
}

impl Bound {
    pub(crate) fn bind(config: &NetexecConfig) -> io::Result<Bound> {
        let mut bound = Bound {
            listeners: Vec::new(),
            datagrams: Vec::new(),
        };
        for &port in &config.http_ports {
            for socket in bind_port(port, Type::STREAM)? {
                socket.listen(1024)?;
                bound.listeners.push(TcpListener::from_std(socket.into())?);
            }
        }
        for &port in &config.udp_ports {
            for socket in bind_port(port, Type::DGRAM)? {
                bound.datagrams.push(UdpSocket::from_std(socket.into())?);
            }
        }
        Ok(bound)
    }

    /// The bound TCP and UDP addresses, for tests that bind port 0.
    #[cfg(test)]
    pub(crate) fn local_addrs(&self) -> io::Result<(Vec<SocketAddr>, Vec<SocketAddr>)> {
        let tcp = self.listeners.iter().map(TcpListener::local_addr);
        let udp = self.datagrams.iter().map(UdpSocket::local_addr);
        Ok((
            tcp.collect::<io::Result<_>>()?,
            udp.collect::<io::Result<_>>()?,
        ))
    }

    /// Serves every socket until dropped; dropping the `JoinSet` aborts the
    /// loops and, through their own sets, every open connection.
    pub(crate) async fn run(self, hostname: Arc<str>) -> io::Result<()> {
        let mut loops = JoinSet::new();
        for listener in self.listeners {
            loops.spawn(accept_loop(listener, hostname.clone()));
        }
        for socket in self.datagrams {
            loops.spawn(datagram_loop(socket, hostname.clone()));
        }
        match loops.join_next().await {
            Some(Ok(never)) => match never {},
            Some(Err(failed)) => Err(io::Error::other(format!(
                "netexec: a serving task failed: {failed}"
            ))),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "netexec: no port to serve",
            )),
        }
    }
}

/// Binds `port` for both families: one dual-stack `[::]` socket where the
/// kernel allows it, else a v6-only `[::]` plus `0.0.0.0`, and `0.0.0.0`
/// alone where IPv6 is unavailable (module absent or disabled).
fn bind_port(port: u16, kind: Type) -> io::Result<Vec<Socket>> {
    let v6 = match Socket::new(Domain::IPV6, kind, None) {
        Ok(socket) => socket,
        Err(_) => return Ok(vec![bind_v4(port, kind)?]),
    };
    let dual = v6.set_only_v6(false).is_ok();
    if !dual {
        v6.set_only_v6(true)?;
    }
    prepare(&v6, kind)?;
    match v6.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into()) {
        Ok(()) if dual => Ok(vec![v6]),
        Ok(()) => Ok(vec![v6, bind_v4(port, kind)?]),
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => Ok(vec![bind_v4(port, kind)?]),
        Err(e) => Err(port_error(port, e)),
    }
}

fn bind_v4(port: u16, kind: Type) -> io::Result<Socket> {
    let v4 = Socket::new(Domain::IPV4, kind, None)?;
    prepare(&v4, kind)?;
    v4.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(|e| port_error(port, e))?;
    Ok(v4)
}

fn prepare(socket: &Socket, kind: Type) -> io::Result<()> {
    // A restarted container must get its TCP port back despite TIME_WAIT.
    if kind == Type::STREAM {
        socket.set_reuse_address(true)?;
    }
    // tokio requires non-blocking sockets.
    socket.set_nonblocking(true)
}

fn port_error(port: u16, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("netexec: cannot bind port {port}: {e}"))
}

async fn accept_loop(listener: TcpListener, hostname: Arc<str>) -> Infallible {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let hostname = hostname.clone();
                connections.spawn(serve_connection(stream, canonical(peer), hostname));
            }
            Err(e) => {
                log(format_args!("accept failed: {e}"));
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
        // Reap finished connections so the set does not grow forever.
        while connections.try_join_next().is_some() {}
    }
}

async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, hostname: Arc<str>) {
    let exchange = tokio::time::timeout(
        CONNECTION_TIMEOUT,
        answer_request(&mut stream, peer, &hostname),
    );
    match exchange.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log(format_args!("connection from {peer} failed: {e}")),
        Err(_) => log(format_args!(
            "connection from {peer} timed out after {CONNECTION_TIMEOUT:?}"
        )),
    }
}

async fn answer_request(
    stream: &mut TcpStream,
    peer: SocketAddr,
    hostname: &str,
) -> io::Result<()> {
    let (request, response) = match read_head(stream).await? {
        // A bare connect (a TCP health check, a port scan) is not a request.
        Head::Closed => return Ok(()),
        Head::TooLarge => (
            "oversized request".to_string(),
            Response::error(Status::HeadTooLarge),
        ),
        Head::Complete(head) => match parse_request_line(&head) {
            Some((method, target)) => (
                format!("{method} {target}"),
                respond(method, target, peer, hostname),
            ),
            None => (
                "malformed request".to_string(),
                Response::error(Status::BadRequest),
            ),
        },
    };
    log(format_args!(
        "{request} from {peer} -> {}",
        response.status.code()
    ));
    stream.write_all(&response.render()).await?;
    stream.shutdown().await?;
    linger(stream).await;
    Ok(())
}

/// Reads and discards what the client still sends until it closes or
/// [`LINGER`] passes: closing a socket with unread input makes the kernel
/// send a reset, which can destroy the response before the client reads it.
async fn linger(stream: &mut TcpStream) {
    let mut sink = [0u8; 2048];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    // Running out of time only means the client is slow to close; nothing to report.
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// What arrived before the empty line that ends a request head.
enum Head {
    Complete(Vec<u8>),
    TooLarge,
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = head_end(&buf).filter(|&end| end <= MAX_HEAD) {
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Head::TooLarge);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Index of the newline that precedes the empty line ending the head.
/// Bare `\n` line ends are accepted too, as Go's server does, so `nc` works.
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find(|&i| {
        buf[i] == b'\n' && (buf[i + 1..].starts_with(b"\n") || buf[i + 1..].starts_with(b"\r\n"))
    })
}

/// `GET /path?query HTTP/1.1` → (method, target); headers are not needed.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let first = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let well_formed = parts.next().is_none()
        && !method.is_empty()
        && target.starts_with('/')
        && version.starts_with("HTTP/1.");
    well_formed.then_some((method, target))
}

fn respond(method: &str, target: &str, peer: SocketAddr, hostname: &str) -> Response {
    if method != "GET" {
        return Response::error(Status::MethodNotAllowed);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/hostname" => Response::ok(hostname),
        "/clientip" => Response::ok(peer.to_string()),
        "/echo" => match query_value(query, "msg") {
            Ok(msg) => Response::ok(msg.unwrap_or_default()),
            Err(e) => Response::text(Status::BadRequest, e.to_string()),
        },
        "/healthz" => Response::ok("ok"),
        _ => Response::error(Status::NotFound),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    HeadTooLarge,
}

impl Status {
    fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::HeadTooLarge => 431,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::HeadTooLarge => "Request Header Fields Too Large",
        }
    }
}

struct Response {
    status: Status,
    body: Vec<u8>,
}

impl Response {
    fn ok(body: impl Into<Vec<u8>>) -> Response {
        Response::text(Status::Ok, body)
    }

    /// An error answer whose body is its reason phrase.
    fn error(status: Status) -> Response {
        Response::text(status, format!("{}\n", status.reason().to_lowercase()))
    }

    fn text(status: Status, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            body: body.into(),
        }
    }

    fn render(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status.code(),
            self.status.reason(),
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid percent-encoding in query at byte {at}")]
struct BadEscape {
    at: usize,
}

/// The decoded value of the first `key=value` pair named `key`, if any.
fn query_value(query: &str, key: &str) -> Result<Option<Vec<u8>>, BadEscape> {
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(name)? == key.as_bytes() {
            return percent_decode(value).map(Some);
        }
    }
    Ok(None)
}

/// Form decoding as Go's `url.ParseQuery` does it: `%XX` escapes and `+` for space.
fn percent_decode(input: &str) -> Result<Vec<u8>, BadEscape> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| Some((hex_digit(hex[0])? << 4) | hex_digit(hex[1])?))
                    .ok_or(BadEscape { at: i })?;
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    // to_digit yields at most 15 here, so the narrowing is lossless.
    char::from(b).to_digit(16).map(|d| d as u8)
}

async fn datagram_loop(socket: UdpSocket, hostname: Arc<str>) -> Infallible {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            // Errors here are asynchronous ones left by an earlier reply
            // (e.g. the client went away); the socket itself is still fine.
            Err(e) => {
                log(format_args!("UDP receive failed: {e}"));
                continue;
            }
        };
        let peer = canonical(from);
        let (command, answer) = datagram_answer(&buf[..n], peer, &hostname);
        // Reply to the address as received: a v4-mapped one on a dual-stack socket.
        match socket.send_to(&answer, from).await {
            Ok(_) => log(format_args!(
                "UDP {command} from {peer} -> {} bytes",
                answer.len()
            )),
            Err(e) => log(format_args!(
                "UDP {command} from {peer} -> reply failed: {e}"
            )),
        }
    }
}

/// The command's name (for the log) and the reply to one datagram.
/// Surrounding whitespace is ignored so `echo hostname | nc -u` works.
fn datagram_answer(datagram: &[u8], peer: SocketAddr, hostname: &str) -> (&'static str, Vec<u8>) {
    let text = datagram.trim_ascii();
    if text == b"hostname" {
        ("hostname", hostname.into())
    } else if text == b"clientip" {
        ("clientip", peer.to_string().into_bytes())
    } else if let Some(rest) = text.strip_prefix(b"echo ") {
        ("echo", rest.to_vec())
    } else {
        ("raw", datagram.to_vec())
    }
}

/// A dual-stack socket sees IPv4 clients as `::ffff:a.b.c.d`; report them as
/// plain IPv4, as agnhost (on separate sockets) does.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// One line to stdout. Logging is best effort: a closed stdout must not stop
/// the server, so write errors are ignored (`println!` would panic).
#[cfg(not(test))]
fn log(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(io::stdout().lock(), "{line}");
}

/// Under test, `println!` so the harness captures the lines with the test.
#[cfg(test)]
fn log(line: std::fmt::Arguments) {
    println!("{line}");
}

/// A server on ephemeral ports (TCP and UDP, dual-stack) for tests here and in
/// other modules; it stops with the test's runtime.
#[cfg(test)]
pub(crate) async fn spawn_test_server(hostname: &str) -> (u16, u16) {
    let config = NetexecConfig {
        http_ports: vec![0],
        udp_ports: vec![0],
        hostname: hostname.to_string(),
        delay_shutdown: 0,
    };
    let bound = Bound::bind(&config).unwrap();
    let (tcp, udp) = bound.local_addrs().unwrap();
    assert_eq!(
        (tcp.len(), udp.len()),
        (1, 1),
        "expected dual-stack sockets"
    );
    tokio::spawn(bound.run(config.hostname.into()));
    (tcp[0].port(), udp[0].port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn ports(http: &[u16], udp: &[u16]) -> Option<NetexecConfig> {
        Some(NetexecConfig {
            http_ports: http.to_vec(),
            udp_ports: udp.to_vec(),
            hostname: String::new(),
            delay_shutdown: 0,
        })
    }

    /// Sends a raw request and returns the whole raw response.
    async fn raw_http(addr: SocketAddr, request: &str) -> (SocketAddr, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let local = stream.local_addr().unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        (local, response)
    }

    async fn get(addr: SocketAddr, path: &str) -> (SocketAddr, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        raw_http(addr, &request).await
    }

    fn body(response: &str) -> &str {
        response.split_once("\r\n\r\n").unwrap().1
    }

    async fn udp(addr: SocketAddr, message: &[u8]) -> (SocketAddr, Vec<u8>) {
        let local: SocketAddr = if addr.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        }
        .parse()
        .unwrap();
        let socket = UdpSocket::bind(local).await.unwrap();
        socket.connect(addr).await.unwrap();
        socket.send(message).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        (socket.local_addr().unwrap(), buf[..n].to_vec())
    }

    fn v4(port: u16) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, port).into()
    }

    fn v6(port: u16) -> SocketAddr {
        (Ipv6Addr::LOCALHOST, port).into()
    }

    #[tokio::test]
    async fn http_hostname_and_healthz() {
        let (http, _) = spawn_test_server("pod-a").await;
        let (_, response) = get(v4(http), "/hostname").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("Content-Length: 5\r\n"), "{response}");
        assert!(response.contains("Connection: close\r\n"), "{response}");
        assert_eq!(body(&response), "pod-a");
        assert_eq!(body(&get(v4(http), "/healthz").await.1), "ok");
    }

    #[tokio::test]
    async fn http_clientip_is_the_client_address_on_both_families() {
        let (http, _) = spawn_test_server("pod-a").await;
        for server in [v4(http), v6(http)] {
            let (local, response) = get(server, "/clientip").await;
            assert_eq!(body(&response), local.to_string());
        }
    }

    #[tokio::test]
    async fn http_echo_decodes_the_message() {
        let (http, _) = spawn_test_server("pod-a").await;
        let (_, response) = get(v6(http), "/echo?x=1&msg=hello%20world+%26%2f%C3%A9").await;
        assert_eq!(body(&response), "hello world &/é");
        let (_, response) = get(v4(http), "/echo").await;
        assert_eq!(body(&response), "");
        let (_, response) = get(v4(http), "/echo?msg=bad%zz").await;
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    }

    #[tokio::test]
    async fn http_unknown_paths_methods_and_garbage_are_refused() {
        let (http, _) = spawn_test_server("pod-a").await;
        for path in ["/shell?cmd=id", "/exit", "/"] {
            let (_, response) = get(v4(http), path).await;
            assert!(
                response.starts_with("HTTP/1.1 404 Not Found\r\n"),
                "{response}"
            );
        }
        let (_, response) = raw_http(v4(http), "POST /hostname HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 405 "), "{response}");
        let (_, response) = raw_http(v4(http), "hello\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let (_, response) = raw_http(v4(http), &huge).await;
        assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    }

    #[tokio::test]
    async fn http_accepts_bare_newlines() {
        let (http, _) = spawn_test_server("pod-a").await;
        let (_, response) = raw_http(v4(http), "GET /hostname HTTP/1.0\n\n").await;
        assert_eq!(body(&response), "pod-a");
    }

    #[tokio::test]
    async fn udp_commands_on_both_families() {
        let (_, port) = spawn_test_server("pod-b").await;
        for server in [v4(port), v6(port)] {
            assert_eq!(udp(server, b"hostname").await.1, b"pod-b");
            assert_eq!(udp(server, b"hostname\n").await.1, b"pod-b");
            assert_eq!(udp(server, b"echo hi there").await.1, b"hi there");
            let (local, answer) = udp(server, b"clientip").await;
            assert_eq!(answer, local.to_string().into_bytes());
            assert_eq!(udp(server, b"\x00whatever ").await.1, b"\x00whatever ");
        }
    }

    #[tokio::test]
    async fn serve_reports_busy_ports_and_empty_configs() {
        let taken = std::net::TcpListener::bind("[::]:0").unwrap();
        let config = NetexecConfig {
            http_ports: vec![taken.local_addr().unwrap().port()],
            udp_ports: vec![],
            hostname: "x".into(),
            delay_shutdown: 0,
        };
        let err = serve(config).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("cannot bind port"), "{err}");

        let empty = NetexecConfig {
            http_ports: vec![],
            udp_ports: vec![],
            hostname: "x".into(),
            delay_shutdown: 0,
        };
        let err = serve(empty).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn parse_agnhost_args_variants() {
        assert_eq!(
            parse_agnhost_args(&args(&["netexec"])),
            ports(&[8080], &[8081])
        );
        assert_eq!(
            parse_agnhost_args(&args(&["netexec", "--http-port=80", "--udp-port=53"])),
            ports(&[80], &[53])
        );
        assert_eq!(
            parse_agnhost_args(&args(&["netexec", "--http-port", "9000"])),
            ports(&[9000], &[8081])
        );
        assert_eq!(
            parse_agnhost_args(&args(&["netexec", "-udp-port", "-1", "--delay-shutdown=5"])),
            Some(NetexecConfig {
                delay_shutdown: 5,
                ..ports(&[8080], &[]).unwrap()
            })
        );
        assert_eq!(
            parse_agnhost_args(&args(&["netexec", "--http-port=1", "--http-port=2"])),
            ports(&[2], &[8081])
        );
    }

    #[test]
    fn parse_agnhost_args_rejects_other_commands_and_bad_ports() {
        assert_eq!(parse_agnhost_args(&[]), None);
        assert_eq!(parse_agnhost_args(&args(&["pause"])), None);
        assert_eq!(
            parse_agnhost_args(&args(&["serve-hostname", "--port=80"])),
            None
        );
        assert_eq!(
            parse_agnhost_args(&args(&["netexec", "--http-port=http"])),
            None
        );
        assert_eq!(
            parse_agnhost_args(&args(&["netexec", "--http-port=70000"])),
            None
        );
        assert_eq!(parse_agnhost_args(&args(&["netexec", "--http-port"])), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%41+b").unwrap(), b"aA b");
        assert_eq!(percent_decode("%").unwrap_err(), BadEscape { at: 0 });
        assert_eq!(percent_decode("x%4").unwrap_err(), BadEscape { at: 1 });
        assert_eq!(percent_decode("%+1").unwrap_err(), BadEscape { at: 0 });
    }
}
