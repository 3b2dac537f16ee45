//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's
//! `leaderelection` does it: the holder renews the Lease; another candidate
//! takes it only once it has not been renewed for its duration. Whether a
//! candidate may write, and what, is decided here (pure); a source writes
//! the result with optimistic concurrency (the Lease's resourceVersion), so
//! of two candidates racing for an expired Lease only one wins.
//!
//! Without fencing a deposed leader may act for up to one renew period
//! after it lost the Lease: only use it for work that tolerates that (the
//! LoadBalancer address allocator does: its writes are idempotent and
//! decided from the whole cluster's state).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;

use crate::liveness;

/// What a candidate does with the Lease it read.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Write this spec (create, renew or take over).
    Write(LeaseSpec),
    /// Someone else holds it until it expires.
    HeldBy(String),
}

/// `candidate`'s claim on a Lease whose spec is `current` (`None`: no
/// Lease yet), for `term`, at `now`.
pub fn claim(
    current: Option<&LeaseSpec>,
    candidate: &str,
    term: Duration,
    now: Timestamp,
) -> Claim {
    let seconds = i32::try_from(term.as_secs().max(1)).unwrap_or(i32::MAX);
    let renewed = |spec: &LeaseSpec| LeaseSpec {
        holder_identity: Some(candidate.to_owned()),
        lease_duration_seconds: Some(seconds),
        renew_time: Some(MicroTime(now)),
        ..spec.clone()
    };
    let Some(spec) = current else {
        return Claim::Write(LeaseSpec {
            acquire_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..renewed(&LeaseSpec::default())
        });
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == candidate {
        return Claim::Write(renewed(spec));
    }
    if !holder.is_empty() && !expired(spec, now) {
        return Claim::HeldBy(holder.to_owned());
    }
    Claim::Write(LeaseSpec {
        acquire_time: Some(MicroTime(now)),
        lease_transitions: Some(spec.lease_transitions.unwrap_or(0).saturating_add(1)),
        ..renewed(spec)
    })
}

/// Whether the holder let the Lease run out (one without a renew time or
/// duration never held anything).
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    liveness::valid_until(spec).is_none_or(|until| until <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERM: Duration = Duration::from_secs(15);

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn written(claim: Claim) -> LeaseSpec {
        match claim {
            Claim::Write(spec) => spec,
            Claim::HeldBy(holder) => panic!("held by {holder}"),
        }
    }

    #[test]
    fn the_first_candidate_creates_the_lease() {
        let spec = written(claim(None, "node-a", TERM, at(0)));
        assert_eq!(spec.holder_identity.as_deref(), Some("node-a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(spec.lease_transitions, Some(0));
    }

    #[test]
    fn the_holder_renews_and_keeps_its_acquire_time() {
        let held = written(claim(None, "node-a", TERM, at(0)));
        let renewed = written(claim(Some(&held), "node-a", TERM, at(5)));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(5))));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(renewed.lease_transitions, Some(0));
    }

    #[test]
    fn another_candidate_waits_until_the_lease_expires_then_takes_it() {
        let held = written(claim(None, "node-a", TERM, at(0)));
        assert_eq!(
            claim(Some(&held), "node-b", TERM, at(14)),
            Claim::HeldBy("node-a".into())
        );
        let taken = written(claim(Some(&held), "node-b", TERM, at(15)));
        assert_eq!(taken.holder_identity.as_deref(), Some("node-b"));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(15))));
        assert_eq!(taken.lease_transitions, Some(1));
    }

    #[test]
    fn a_lease_without_holder_or_times_is_free() {
        let released = LeaseSpec {
            holder_identity: Some("node-a".into()),
            ..LeaseSpec::default()
        };
        assert!(matches!(
            claim(Some(&released), "node-b", TERM, at(0)),
            Claim::Write(_)
        ));
        assert!(matches!(
            claim(Some(&LeaseSpec::default()), "node-b", TERM, at(0)),
            Claim::Write(_)
        ));
    }
}
