//! Bookkeeping every lab controller does on Kubernetes objects, the way an
//! API server would: an object's (namespace, name) key, fresh UIDs and
//! timestamps. It must not read or write the store.

use std::io::Read;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::Metadata;

/// The namespace objects without one land in.
pub const DEFAULT_NAMESPACE: &str = "default";

/// An object's (namespace, name); no namespace, or an empty one, means
/// `default`.
pub fn key<K: Metadata<Ty = ObjectMeta>>(object: &K) -> (String, String) {
    let meta = object.metadata();
    (
        // An empty namespace is the default one, as the API server takes it.
        meta.namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// A random object UID (128 bits, hex).
pub fn random_uid() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The wall clock as a Kubernetes timestamp (millisecond precision).
pub fn now() -> Time {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Time(k8s_openapi::jiff::Timestamp::from_millisecond(ms).unwrap_or_default())
}

/// Starts a graceful deletion, as the API server does: `deletionTimestamp`
/// (the first one stays) and the grace period.
pub fn mark_deleted(meta: &mut ObjectMeta, grace: Duration) {
    if meta.deletion_timestamp.is_none() {
        meta.deletion_timestamp = Some(now());
    }
    meta.deletion_grace_period_seconds = Some(i64::try_from(grace.as_secs()).unwrap_or(i64::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, Service};

    #[test]
    fn keys_default_the_namespace_and_uids_differ() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        assert_eq!(key(&pod), ("default".into(), "p".into()));
        let mut svc = Service::default();
        svc.metadata.namespace = Some("demo".into());
        svc.metadata.name = Some("s".into());
        assert_eq!(key(&svc), ("demo".into(), "s".into()));
        let (a, b) = (random_uid(), random_uid());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn graceful_deletion_keeps_the_first_timestamp() {
        let mut meta = ObjectMeta::default();
        mark_deleted(&mut meta, Duration::from_secs(2));
        let first = meta.deletion_timestamp.clone();
        assert!(first.is_some());
        assert_eq!(meta.deletion_grace_period_seconds, Some(2));
        std::thread::sleep(Duration::from_millis(5));
        mark_deleted(&mut meta, Duration::ZERO);
        assert_eq!(meta.deletion_timestamp, first);
        assert_eq!(meta.deletion_grace_period_seconds, Some(0));
    }
}
