//! `/healthz` (the agent's loop is alive) and `/readyz` (the datapath has
//! converged at least once) over plain HTTP/1.1, for kubelet probes and the
//! lab. Deliberately tiny: two fixed answers, no framework.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use weft_proxy::health::{read_path, respond};

/// Shared between the agent loop (writer) and the server (reader).
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    heartbeat_ms: AtomicU64,
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
                ("/healthz" | "/readyz", true) => ("200 OK", "ok\n"),
                ("/healthz" | "/readyz", false) => ("503 Service Unavailable", "not ready\n"),
                _ => ("404 Not Found", "not found\n"),
            };
            respond(&mut conn, status, "text/plain", body).await;
        });
    }
}
