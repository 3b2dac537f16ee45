//! `healthCheckNodePort` servers: for each LoadBalancer Service with
//! `externalTrafficPolicy: Local`, an HTTP port on every node answering 200
//! when the node has a local endpoint and 503 when it has none, so a load
//! balancer sends traffic only to nodes that keep the client's address and
//! can serve it (kube-proxy's answer format).
//!
//! Also the one tiny HTTP/1.1 responder the agent's other endpoints share.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::model::ServiceKey;

/// Reads one request (its first 1 KiB is enough for a probe) and returns
/// its path.
pub async fn read_path(conn: &mut TcpStream) -> String {
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).await.unwrap_or(0);
    let request = String::from_utf8_lossy(&buf[..n]);
    request.split_whitespace().nth(1).unwrap_or("/").to_string()
}

/// Writes a complete response and lets the connection close.
pub async fn respond(conn: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes()).await;
}

struct Server {
    service: ServiceKey,
    local: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// The running servers, one per port.
#[derive(Default)]
pub struct HealthServers {
    servers: BTreeMap<u16, Server>,
}

impl HealthServers {
    /// Makes the servers match `wanted` (port → Service and its number of
    /// local endpoints). Must run inside a tokio runtime. A port that cannot
    /// be bound is logged and tried again on the next call.
    pub fn update(&mut self, wanted: &BTreeMap<u16, (ServiceKey, usize)>) {
        self.servers.retain(|port, server| {
            let keep = wanted.get(port).is_some_and(|(k, _)| *k == server.service);
            if !keep {
                server.task.abort();
            }
            keep
        });
        for (port, (service, local)) in wanted {
            if let Some(server) = self.servers.get(port) {
                server.local.store(*local, Ordering::Relaxed);
                continue;
            }
            let std_listener = match std::net::TcpListener::bind(("0.0.0.0", *port)) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(port, service = %service, error = %e, "cannot serve healthCheckNodePort; retrying at the next sync");
                    continue;
                }
            };
            let _ = std_listener.set_nonblocking(true);
            let Ok(listener) = TcpListener::from_std(std_listener) else {
                continue;
            };
            let counter = Arc::new(AtomicUsize::new(*local));
            let task = tokio::spawn(serve(listener, service.clone(), counter.clone()));
            self.servers.insert(
                *port,
                Server {
                    service: service.clone(),
                    local: counter,
                    task,
                },
            );
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for server in self.servers.values() {
            server.task.abort();
        }
    }
}

async fn serve(listener: TcpListener, service: ServiceKey, local: Arc<AtomicUsize>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let (body, status) = answer(&service, local.load(Ordering::Relaxed));
        tokio::spawn(async move {
            let _ = read_path(&mut conn).await;
            respond(&mut conn, status, "application/json", &body).await;
        });
    }
}

fn answer(service: &ServiceKey, local: usize) -> (String, &'static str) {
    let body = json!({
        "service": {"namespace": &*service.namespace, "name": &*service.name},
        "localEndpoints": local,
        "serviceProxyHealthy": true,
    });
    let status = if local > 0 {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    (body.to_string(), status)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(port: u16) -> String {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn answers_200_with_local_endpoints_and_503_without() {
        let key = ServiceKey {
            namespace: "demo".into(),
            name: "web".into(),
        };
        let port = free_port();
        let mut servers = HealthServers::default();
        servers.update(&[(port, (key.clone(), 2))].into());
        let reply = get(port).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(reply.contains("\"localEndpoints\":2"), "{reply}");
        assert!(reply.contains("\"name\":\"web\""), "{reply}");
        servers.update(&[(port, (key.clone(), 0))].into());
        assert!(get(port).await.starts_with("HTTP/1.1 503"));
        servers.update(&BTreeMap::new());
        assert!(servers.ports().is_empty());
        tokio::task::yield_now().await;
    }
}
