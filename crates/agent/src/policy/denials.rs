//! Denied connections, explained: the packets the policy table logs (see
//! `weft_policy::rules::LOG_GROUP`) are read on a thread of their own
//! and explained by the enforcement loop with the same model that wrote
//! the rules ("denied demo/client → prod/db:5432/TCP: ingress of prod/db
//! is isolated by prod/default-deny and no rule allows demo/client").
//!
//! This module owns reading the log group and turning a flow into one
//! log line, at most once per flow every [`REPEAT`] (retransmissions of a
//! denied SYN are one denial). It decides nothing: the verdict is
//! `weft_policy::verdict`'s.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use weft_datapath::nflog::{Flow, LogGroup};
use weft_policy::model::{NamespaceLabels, Pod, Policies, Protocol};
use weft_policy::rules::LOG_GROUP;
use weft_policy::verdict::{verdict, Connection, Party};

/// How long a flow's denial is not logged again.
pub const REPEAT: Duration = Duration::from_secs(10);

/// The tracing target of denial lines (`weft lab denials` finds them by it).
pub const TARGET: &str = "weft::denied";

/// Starts reading the log group; the flows come out of the receiver. If
/// the group cannot be read, says so once: denials are then not logged,
/// but still dropped.
pub fn follow() -> mpsc::UnboundedReceiver<Flow> {
    let (tx, rx) = mpsc::unbounded_channel();
    let started = std::thread::Builder::new()
        .name("denials".into())
        .spawn(move || {
            let mut group = match LogGroup::bind(LOG_GROUP) {
                Ok(group) => group,
                Err(e) => {
                    tracing::warn!(error = %e, "denied connections will be dropped but not logged");
                    return;
                }
            };
            loop {
                match group.receive() {
                    Ok(batch) => {
                        for flow in batch.into_iter().filter_map(|l| l.flow) {
                            if tx.send(flow).is_err() {
                                return;
                            }
                        }
                    }
                    // Overruns (ENOBUFS) lose log lines, not packets' fate.
                    Err(e) => tracing::debug!(error = %e, "reading denied packets"),
                }
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start reading denied connections");
    }
    rx
}

/// The flows logged lately, to log each once per [`REPEAT`].
#[derive(Default)]
pub struct Recent {
    logged: HashMap<Flow, Instant>,
}

impl Recent {
    /// Whether `flow` is to be logged at `now` (and remembers it).
    pub fn is_new(&mut self, flow: Flow, now: Instant) -> bool {
        self.logged.retain(|_, at| now.duration_since(*at) < REPEAT);
        match self.logged.get(&flow) {
            Some(_) => false,
            None => {
                self.logged.insert(flow, now);
                true
            }
        }
    }
}

/// One line saying why `flow` was denied, from the policies as they are
/// now.
pub fn explain(
    flow: &Flow,
    policies: &Policies,
    pods: &[Pod],
    namespaces: &NamespaceLabels,
) -> String {
    let party = |ip: IpAddr| match pods.iter().find(|p| p.ip == Some(ip) && !p.host_network) {
        Some(pod) => Party::Pod(pod),
        None => Party::Address(ip),
    };
    let (from, to) = (party(flow.src.into()), party(flow.dst.into()));
    let protocol = match flow.protocol {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    };
    let (Some(protocol), Some(port)) = (protocol, flow.dport) else {
        return format!(
            "denied {from} → {to} (IP protocol {}): no policy rule allows it",
            flow.protocol
        );
    };
    let conn = Connection {
        from,
        to,
        port,
        protocol,
    };
    let decided = verdict(policies, namespaces, &conn);
    let explained = decided.explain(&conn);
    if decided.allowed() {
        // The rules that dropped it were written before a change.
        format!("denied by rules since replaced; now {explained}")
    } else {
        explained
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn flow(dport: u16) -> Flow {
        Flow {
            src: Ipv4Addr::new(10, 244, 1, 2),
            dst: Ipv4Addr::new(10, 244, 2, 3),
            protocol: 6,
            dport: Some(dport),
        }
    }

    #[test]
    fn a_flow_is_logged_once_per_repeat() {
        let mut recent = Recent::default();
        let now = Instant::now();
        assert!(recent.is_new(flow(80), now));
        assert!(!recent.is_new(flow(80), now + Duration::from_secs(1)));
        assert!(recent.is_new(flow(81), now + Duration::from_secs(1)));
        assert!(recent.is_new(flow(80), now + REPEAT));
    }

    #[test]
    fn unknown_addresses_and_protocols_are_still_explained() {
        let line = explain(
            &flow(80),
            &Policies::default(),
            &[],
            &NamespaceLabels::new(),
        );
        assert!(
            line.starts_with(
                "denied by rules since replaced; now allowed 10.244.1.2 → 10.244.2.3:80/TCP"
            ),
            "{line}"
        );
        let icmp = Flow {
            protocol: 1,
            dport: None,
            ..flow(0)
        };
        let line = explain(&icmp, &Policies::default(), &[], &NamespaceLabels::new());
        assert_eq!(
            line,
            "denied 10.244.1.2 → 10.244.2.3 (IP protocol 1): no policy rule allows it"
        );
    }
}
