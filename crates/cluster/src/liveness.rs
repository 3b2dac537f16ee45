//! Node liveness: every agent renews a heartbeat, a
//! `coordination.k8s.io/v1` Lease named after its node in
//! `kube-node-lease` (as kubelets do), and reads which nodes are live.
//! The heartbeat's shape and expiry are decided here (pure); the sources
//! store and list them.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::ClusterError;

pub const HEARTBEAT_NAMESPACE: &str = "kube-node-lease";

/// Node heartbeats.
pub trait Liveness {
    /// Renews `node`'s heartbeat, valid for `valid_for`.
    fn beat(
        &self,
        node: &str,
        valid_for: Duration,
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// The nodes whose heartbeat has not expired.
    fn live_nodes(&self) -> impl Future<Output = Result<BTreeSet<String>, ClusterError>> + Send;
}

/// `node`'s heartbeat renewed at `now`, valid for `valid_for`.
pub fn heartbeat(node: &str, valid_for: Duration, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node.into()),
            namespace: Some(HEARTBEAT_NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.into()),
            lease_duration_seconds: Some(
                i32::try_from(valid_for.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    }
}

/// The holders of the `leases` that have not expired at `now`.
pub fn live<'a>(leases: impl IntoIterator<Item = &'a Lease>, now: Timestamp) -> BTreeSet<String> {
    leases
        .into_iter()
        .filter(|lease| is_live(lease, now))
        .filter_map(|lease| lease.spec.as_ref()?.holder_identity.clone())
        .collect()
}

fn is_live(lease: &Lease, now: Timestamp) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(valid_until)
        .is_some_and(|until| until > now)
}

/// When a Lease runs out unless renewed: its renew time plus its
/// duration (`None`: it never held anything).
pub(crate) fn valid_until(spec: &LeaseSpec) -> Option<Timestamp> {
    let MicroTime(renewed) = spec.renew_time.as_ref()?;
    let seconds = spec.lease_duration_seconds?;
    renewed
        .checked_add(SignedDuration::from_secs(i64::from(seconds)))
        .ok()
}

/// The wall clock as a Kubernetes timestamp.
pub fn now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::new(
        i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
    )
    .unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_expire_after_their_duration() {
        let now = now();
        let beat = heartbeat("node-1", Duration::from_secs(3), now);
        let later = |s| now.checked_add(SignedDuration::from_secs(s)).unwrap();
        assert_eq!(live([&beat], now), ["node-1".to_string()].into());
        assert_eq!(live([&beat], later(2)).len(), 1);
        assert!(live([&beat], later(4)).is_empty());
        assert!(
            live([&Lease::default()], now).is_empty(),
            "no spec: not live"
        );
    }
}
