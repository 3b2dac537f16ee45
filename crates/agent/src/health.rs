//! `/healthz` (the agent's loop is alive) and `/readyz` (the datapath has
//! converged at least once, and nothing since made the agent unfit, such
//! as its store file vanishing) over plain HTTP/1.1, for kubelet probes and
//! the lab. Deliberately tiny: fixed answers (a failing `/readyz` gives its
//! reason), no framework.
//!
//! `/readyz` also lists, one line each after `ok`, the Services the proxy
//! left out (invalid, or nft rejected their rules): one user's broken
//! Service must not take the node out of service, but the operator must
//! see it. `/metrics` serves the agent's [`Metrics`].
//!
//! [`serve_proxy`] is kube-proxy's health endpoint (port 10256), which
//! cloud load balancers probe for `externalTrafficPolicy: Cluster`
//! Services: 200 while the Service proxy has synced within a minute, 503
//! otherwise, with kube-proxy's JSON body.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use weft_proxy::health::{read_path, respond};
use weft_proxy::ServiceKey;

use crate::metrics::{self, Cause, Metrics};

/// Shared between the agent loop (writer) and the server (reader).
#[derive(Debug)]
pub struct Health {
    /// Why the agent is not ready; `None` when it is.
    unready: Mutex<Option<String>>,
    heartbeat_ms: AtomicU64,
    /// "Service ns/name not programmed: reason" lines.
    not_programmed: Mutex<Vec<String>>,
    /// When the Service proxy last had its table in sync (0: never).
    proxy_synced_ms: AtomicU64,
    pub metrics: Metrics,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            unready: Mutex::new(Some("the datapath has not converged yet".into())),
            heartbeat_ms: AtomicU64::new(0),
            not_programmed: Mutex::default(),
            proxy_synced_ms: AtomicU64::new(0),
            metrics: Metrics::default(),
        }
    }
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
        *self.reason() = None;
    }
    pub fn set_unready(&self, why: String) {
        *self.reason() = Some(why);
    }
    /// Why the agent is not ready, or `None` when it is.
    pub fn unready(&self) -> Option<String> {
        self.reason().clone()
    }
    fn reason(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A plain value: a panic elsewhere cannot leave it half-written.
        self.unready.lock().unwrap_or_else(PoisonError::into_inner)
    }
    /// Replaces the Services the proxy left out (on `/readyz` and in the
    /// metrics).
    pub fn set_not_programmed(&self, services: &BTreeMap<ServiceKey, (Cause, String)>) {
        let lines = services
            .iter()
            .map(|(key, (_, why))| format!("Service {key} not programmed: {why}"))
            .collect();
        *self
            .not_programmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = lines;
        self.metrics.set_not_programmed(
            services
                .iter()
                .map(|(key, (cause, _))| (&*key.namespace, &*key.name, *cause)),
        );
    }
    /// `/readyz`'s body when ready.
    fn ready_body(&self) -> String {
        let lines = self
            .not_programmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        lines
            .iter()
            .fold("ok\n".to_string(), |body, line| body + line + "\n")
    }
    /// The Service proxy's table is in sync now.
    pub fn proxy_synced(&self) {
        self.proxy_synced_ms.store(now_ms(), Ordering::Relaxed);
    }
    /// Alive when the loop beat within `stale`.
    pub fn is_alive(&self, stale: Duration) -> bool {
        now_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed))
            <= stale.as_millis() as u64
    }
}

/// An answer: status line, content type, body.
type Reply = (&'static str, &'static str, String);

const TEXT: &str = "text/plain";

/// The answer for `path`.
fn answer(health: &Health, path: &str, stale: Duration) -> Reply {
    const FAILED: &str = "503 Service Unavailable";
    match path {
        "/healthz" if health.is_alive(stale) => ("200 OK", TEXT, "ok\n".into()),
        "/healthz" => (
            FAILED,
            TEXT,
            "not alive: the agent's loop stopped beating\n".into(),
        ),
        "/readyz" => match health.unready() {
            None => ("200 OK", TEXT, health.ready_body()),
            Some(why) => (FAILED, TEXT, format!("not ready: {why}\n")),
        },
        "/metrics" => ("200 OK", metrics::CONTENT_TYPE, health.metrics.encode()),
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

/// How long the proxy may go without being in sync before its health
/// endpoint fails (kube-proxy: twice its 30 s sync period).
pub const PROXY_STALE: Duration = Duration::from_secs(60);

/// The proxy health endpoint's answer at `now_ms` (kube-proxy's shape).
fn proxy_answer(health: &Health, path: &str, now_ms: u64) -> Reply {
    if path != "/healthz" && path != "/livez" {
        return ("404 Not Found", TEXT, "not found\n".into());
    }
    let synced = health.proxy_synced_ms.load(Ordering::Relaxed);
    let healthy = synced != 0 && now_ms.saturating_sub(synced) <= PROXY_STALE.as_millis() as u64;
    let time = |ms: u64| {
        let at = UNIX_EPOCH + Duration::from_millis(ms);
        k8s_openapi::jiff::Timestamp::try_from(at)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    let body = serde_json::json!({
        "lastUpdated": time(synced),
        "currentTime": time(now_ms),
        "nodeEligible": true,
        "healthy": healthy,
    });
    let status = if healthy {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    (status, "application/json", body.to_string())
}

/// Serves the proxy's health endpoint until the task is dropped.
pub async fn serve_proxy(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<()> {
    serve_with(addr, move |path| proxy_answer(&health, path, now_ms())).await
}

/// Serves until the task is dropped.
pub async fn serve(addr: SocketAddr, health: Arc<Health>, stale: Duration) -> std::io::Result<()> {
    serve_with(addr, move |path| answer(&health, path, stale)).await
}

/// Serves `/healthz` (alive) and `/readyz` (not ready: `why`) on `addr`
/// while `work` runs — the agent's wait before it can start at all (for
/// etcd and the network config in it): a kubelet would restart an agent
/// that does not answer, which helps nobody. `addr` is free again when
/// this returns.
pub async fn while_waiting<T>(
    addr: SocketAddr,
    stale: Duration,
    why: String,
    work: impl std::future::Future<Output = T>,
) -> T {
    let health = Arc::new(Health::default());
    health.set_unready(why);
    health.beat();
    let server = tokio::spawn(serve(addr, health.clone(), stale));
    let mut beat = tokio::time::interval(stale / 4);
    tokio::pin!(work);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = beat.tick() => health.beat(),
        }
    };
    server.abort();
    let _ = server.await;
    out
}

/// Answers every request on `addr` with `answer(path)`.
async fn serve_with(
    addr: SocketAddr,
    answer: impl Fn(&str) -> Reply + Send + Sync + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let answer = Arc::new(answer);
    loop {
        let (mut conn, _) = listener.accept().await?;
        let answer = answer.clone();
        tokio::spawn(async move {
            let path = read_path(&mut conn).await;
            let (status, content_type, body) = answer(&path);
            respond(&mut conn, status, content_type, &body).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_fails_until_ready_and_gives_the_reason() {
        let health = Health::default();
        let long = Duration::from_secs(60);
        let (status, _, body) = answer(&health, "/readyz", long);
        assert!(
            status.starts_with("503") && body.contains("not converged"),
            "{body}"
        );
        health.set_ready();
        assert_eq!(
            answer(&health, "/readyz", long),
            ("200 OK", TEXT, "ok\n".into())
        );
        health.set_unready("the store was removed".into());
        let (status, _, body) = answer(&health, "/readyz", long);
        assert!(status.starts_with("503"), "{status}");
        assert_eq!(body, "not ready: the store was removed\n");
        assert_eq!(answer(&health, "/other", long).0, "404 Not Found");
    }

    #[test]
    fn healthz_follows_the_heartbeat() {
        let health = Health::default();
        assert!(answer(&health, "/healthz", Duration::from_secs(1))
            .0
            .starts_with("503"));
        health.beat();
        assert_eq!(
            answer(&health, "/healthz", Duration::from_secs(1)).0,
            "200 OK"
        );
    }

    #[test]
    fn the_proxy_is_healthy_while_its_table_synced_within_a_minute() {
        let health = Health::default();
        let (status, _, body) = proxy_answer(&health, "/healthz", now_ms());
        assert!(status.starts_with("503"), "{status}");
        assert!(body.contains("\"healthy\":false"), "{body}");
        health.proxy_synced();
        let (status, content_type, body) = proxy_answer(&health, "/healthz", now_ms());
        assert_eq!(content_type, "application/json");
        assert_eq!(status, "200 OK");
        assert!(
            body.contains("\"healthy\":true") && body.contains("\"nodeEligible\":true"),
            "{body}"
        );
        let later = now_ms() + PROXY_STALE.as_millis() as u64 + 1000;
        assert!(proxy_answer(&health, "/healthz", later)
            .0
            .starts_with("503"));
        assert_eq!(
            proxy_answer(&health, "/metrics", now_ms()).0,
            "404 Not Found"
        );
    }

    #[test]
    fn readyz_and_metrics_list_the_services_the_proxy_left_out() {
        let health = Health::default();
        health.set_ready();
        let long = Duration::from_secs(60);
        assert_eq!(health.ready_body(), "ok\n");
        let key = ServiceKey {
            namespace: "demo".into(),
            name: "bad".into(),
        };
        let why = (Cause::NftRejected, "syntax error".to_string());
        health.set_not_programmed(&[(key, why)].into());
        assert_eq!(
            answer(&health, "/readyz", long).2,
            "ok\nService demo/bad not programmed: syntax error\n"
        );
        let (status, content_type, body) = answer(&health, "/metrics", long);
        assert_eq!((status, content_type), ("200 OK", metrics::CONTENT_TYPE));
        assert!(
            body.contains(
                "services_not_programmed{namespace=\"demo\",name=\"bad\",cause=\"NftRejected\"} 1"
            ),
            "{body}"
        );
        health.set_not_programmed(&BTreeMap::new());
        assert_eq!(health.ready_body(), "ok\n");
        assert!(!answer(&health, "/metrics", long).2.contains("demo"));
    }
}
