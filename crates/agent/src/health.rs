//! `/healthz` (the agent's loop is alive) and `/readyz` (the datapath has
//! converged at least once) over plain HTTP/1.1, for kubelet probes and the
//! lab. Deliberately tiny: two fixed answers, no framework.
//!
//! `/readyz` also lists, one line each after `ok`, the Services the proxy
//! left out because nft rejected their rules: one user's broken Service
//! must not take the node out of service, but the operator must see it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use weft_proxy::health::{read_path, respond};

/// Shared between the agent loop (writer) and the server (reader).
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    heartbeat_ms: AtomicU64,
    /// "Service ns/name not programmed: reason" lines.
    rejected_services: Mutex<Vec<String>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Health {
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    /// Replaces the list of Services the proxy left out.
    pub fn set_rejected_services(&self, lines: Vec<String>) {
        *self
            .rejected_services
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = lines;
    }
    /// `/readyz`'s body when ready.
    fn ready_body(&self) -> String {
        let rejected = self
            .rejected_services
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        rejected
            .iter()
            .fold("ok\n".to_string(), |body, line| body + line + "\n")
    }
    /// Alive when the loop beat within `stale`.
    pub fn is_alive(&self, stale: Duration) -> bool {
        now_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed))
            <= stale.as_millis() as u64
    }
}

/// Serves until the task is dropped.
pub async fn serve(addr: SocketAddr, health: Arc<Health>, stale: Duration) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (mut conn, _) = listener.accept().await?;
        let health = health.clone();
        tokio::spawn(async move {
            let path = read_path(&mut conn).await;
            let ok = match path.as_str() {
                "/healthz" => health.is_alive(stale),
                "/readyz" => health.is_ready(),
                _ => false,
            };
            let (status, body) = match (path.as_str(), ok) {
                ("/readyz", true) => ("200 OK", health.ready_body()),
                ("/healthz", true) => ("200 OK", "ok\n".into()),
                ("/healthz" | "/readyz", false) => {
                    ("503 Service Unavailable", "not ready\n".into())
                }
                _ => ("404 Not Found", "not found\n".into()),
            };
            respond(&mut conn, status, "text/plain", &body).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_lists_the_services_the_proxy_left_out() {
        let health = Health::default();
        assert_eq!(health.ready_body(), "ok\n");
        health.set_rejected_services(vec!["Service demo/bad not programmed: syntax error".into()]);
        assert_eq!(
            health.ready_body(),
            "ok\nService demo/bad not programmed: syntax error\n"
        );
    }
}
