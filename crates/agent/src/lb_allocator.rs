//! LoadBalancer addresses where nobody else hands them out (a cluster
//! without a cloud provider), as MetalLB's controller does: every agent is
//! a candidate, the elected one gives each LoadBalancer Service of its
//! class an address from the operator's pools and writes it to the
//! Service's `status.loadBalancer.ingress`; the agents' proxies then
//! program and announce it as any other.
//!
//! Pure: the pools' format ([`parse_pools`]) and the [`plan`] (which
//! Service gets which address). The loop ([`run`]) only follows Services,
//! keeps the leadership and writes what the plan says. It must not touch
//! the kernel (announcing is the proxy's job).
//!
//! Pools are the `--lb-cidr` flag's plus the cluster's ConfigMap
//! (`weft-lb-pools`, key `pools`), re-read on every pass: one entry per
//! line or comma, a CIDR (`198.18.100.0/24`; its network and broadcast
//! addresses are never handed out) or a range (`198.18.100.10-198.18.100.20`),
//! `#` starting a comment.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use weft_cluster::cache::{object_key, Cache};
use weft_cluster::load_balancers::AllocationEvent;
use weft_cluster::{ClusterError, Event, LoadBalancerAllocation};
use weft_proxy::model::ingress_ips;

/// An inclusive range of addresses to hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    first: Ipv4Addr,
    last: Ipv4Addr,
}

impl Pool {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&ip)
    }

    /// The pool of a CIDR: all of it but its network and broadcast
    /// addresses (a /31 or /32 is all usable).
    pub fn of_cidr(net: Ipv4Net) -> Pool {
        if net.prefix_len() >= 31 {
            return Pool {
                first: net.network(),
                last: net.broadcast(),
            };
        }
        Pool {
            first: Ipv4Addr::from(u32::from(net.network()) + 1),
            last: Ipv4Addr::from(u32::from(net.broadcast()) - 1),
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Why the pools' text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "LoadBalancer pool {entry:?}: {reason}; write an IPv4 CIDR (198.18.100.0/24) or a range \
     (198.18.100.10-198.18.100.20)"
)]
pub struct PoolError {
    entry: String,
    reason: String,
}

/// The pools in `text` (see the module's comment for the format).
pub fn parse_pools(text: &str) -> Result<Vec<Pool>, PoolError> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(parse_pool)
        .collect()
}

fn parse_pool(entry: &str) -> Result<Pool, PoolError> {
    let refuse = |reason: &str| PoolError {
        entry: entry.into(),
        reason: reason.into(),
    };
    if let Some((first, last)) = entry.split_once('-') {
        let address = |text: &str| {
            text.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| refuse("not two IPv4 addresses"))
        };
        let (first, last) = (address(first)?, address(last)?);
        if last < first {
            return Err(refuse("the range ends before it starts"));
        }
        return Ok(Pool { first, last });
    }
    let net: Ipv4Net = entry
        .parse()
        .map_err(|_| refuse("not an IPv4 CIDR or range"))?;
    if net != net.trunc() {
        return Err(refuse("host bits set; write the network address"));
    }
    Ok(Pool::of_cidr(net))
}

/// One Service's new `status.loadBalancer.ingress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<Ipv4Addr>,
}

/// What a pass does: the writes, and why Services wait (by
/// `namespace/name`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub problems: BTreeMap<String, String>,
}

/// Whether `class` (`None`: Services without a `loadBalancerClass`) is
/// this allocator's and `svc` a LoadBalancer of it.
fn served(svc: &Service, class: Option<&str>) -> bool {
    is_load_balancer(svc)
        && svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_class.as_deref())
            == class
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .is_some_and(|spec| spec.type_.as_deref() == Some("LoadBalancer"))
}

/// Which address each LoadBalancer Service of `class` gets from `pools`,
/// deterministically: older Services first (by creation time, then name);
/// an address asked for in `spec.loadBalancerIP` must be in a pool and
/// free, else a Service keeps the address it has if it still may, else it
/// gets the lowest free one. A Service that cannot get one is left without
/// (its problem says why). A Service no longer of type LoadBalancer loses
/// an address of the pools; Services of another class are left alone.
pub fn plan<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    pools: &[Pool],
    class: Option<&str>,
) -> Plan {
    let services: Vec<&Service> = services.into_iter().collect();
    let mut ours: Vec<&Service> = services
        .iter()
        .copied()
        .filter(|s| served(s, class))
        .collect();
    ours.sort_by_key(|s| (s.metadata.creation_timestamp.clone(), object_key(*s)));
    let mut book = Book::new(pools);
    let unplaced: Vec<String> = ours.into_iter().filter_map(|svc| book.place(svc)).collect();
    let mut free = book.free_addresses();
    for key in unplaced {
        match free.next_free(&book.taken) {
            Some(ip) => book.give(key, ip),
            None => {
                let why = format!("the LoadBalancer pools ({}) have no free address left; add a pool (the ConfigMap weft-lb-pools or --lb-cidr) or delete a LoadBalancer Service", list(pools));
                book.refuse(key, why);
            }
        }
    }
    Plan {
        writes: book.writes(&services),
        problems: book.problems,
    }
}

/// Who holds which address while a plan is made.
struct Book<'p> {
    pools: &'p [Pool],
    taken: BTreeMap<Ipv4Addr, String>,
    /// Each served Service's addresses (empty: none, see `problems`).
    wanted: BTreeMap<String, Vec<Ipv4Addr>>,
    problems: BTreeMap<String, String>,
}

impl<'p> Book<'p> {
    fn new(pools: &'p [Pool]) -> Self {
        Book {
            pools,
            taken: BTreeMap::new(),
            wanted: BTreeMap::new(),
            problems: BTreeMap::new(),
        }
    }

    fn in_pools(&self, ip: Ipv4Addr) -> bool {
        self.pools.iter().any(|p| p.contains(ip))
    }

    fn give(&mut self, key: String, ip: Ipv4Addr) {
        self.taken.insert(ip, key.clone());
        self.wanted.insert(key, vec![ip]);
    }

    fn refuse(&mut self, key: String, why: String) {
        self.problems.insert(key.clone(), why);
        self.wanted.insert(key, vec![]);
    }

    /// Gives `svc` the address it asks for or keeps; its key when it needs
    /// a new one.
    fn place(&mut self, svc: &Service) -> Option<String> {
        let key = object_key(svc);
        match asked_for(svc) {
            Some(Err(text)) => self.refuse(
                key,
                format!("spec.loadBalancerIP {text:?} is not an IPv4 address"),
            ),
            Some(Ok(ip)) if !self.in_pools(ip) => {
                let why = outside(ip, self.pools);
                self.refuse(key, why);
            }
            Some(Ok(ip)) => match self.taken.get(&ip) {
                Some(holder) => {
                    let why = format!("spec.loadBalancerIP {ip} is already used by Service {holder}; use another address or leave loadBalancerIP out to get one");
                    self.refuse(key, why);
                }
                None => self.give(key, ip),
            },
            None => match ingress_ips(svc).into_iter().next() {
                Some(ip) if self.in_pools(ip) && !self.taken.contains_key(&ip) => {
                    self.give(key, ip)
                }
                _ => return Some(key),
            },
        }
        None
    }

    /// The pools' addresses in order, for handing out the lowest free ones.
    fn free_addresses(&self) -> FreeAddresses {
        let ranges: Vec<(u32, u32)> = self
            .pools
            .iter()
            .map(|p| (u32::from(p.first), u32::from(p.last)))
            .collect();
        FreeAddresses {
            ranges: ranges.into_iter(),
            current: None,
        }
    }

    /// What must change in the Services' status: the served ones as
    /// planned, and a former LoadBalancer loses what it had of the pools.
    fn writes(&mut self, services: &[&Service]) -> Vec<Write> {
        let mut writes = Vec::new();
        for svc in services {
            let current = ingress_ips(svc);
            let desired = match self.wanted.remove(&object_key(*svc)) {
                Some(ips) => ips,
                None if !is_load_balancer(svc) && current.iter().any(|ip| self.in_pools(*ip)) => {
                    vec![]
                }
                None => continue,
            };
            if desired != current {
                writes.push(Write {
                    namespace: svc.metadata.namespace.clone().unwrap_or_default(),
                    name: svc.metadata.name.clone().unwrap_or_default(),
                    ips: desired,
                });
            }
        }
        writes
    }
}

/// A cursor over the pools: addresses are only ever taken while it runs,
/// so the lowest free one never lies behind it (one walk per pass, not one
/// per Service).
struct FreeAddresses {
    ranges: std::vec::IntoIter<(u32, u32)>,
    current: Option<(u32, u32)>,
}

impl FreeAddresses {
    fn next_free(&mut self, taken: &BTreeMap<Ipv4Addr, String>) -> Option<Ipv4Addr> {
        loop {
            let (next, last) = match self.current {
                Some(range) => range,
                None => self.ranges.next()?,
            };
            if next > last {
                self.current = None;
                continue;
            }
            // `last` may be 255.255.255.255: step without overflowing.
            self.current = next.checked_add(1).map(|after| (after, last));
            let ip = Ipv4Addr::from(next);
            if !taken.contains_key(&ip) {
                return Some(ip);
            }
        }
    }
}

/// `spec.loadBalancerIP`, when set.
fn asked_for(svc: &Service) -> Option<Result<Ipv4Addr, String>> {
    let text = svc.spec.as_ref()?.load_balancer_ip.as_deref()?.trim();
    (!text.is_empty()).then(|| text.parse().map_err(|_| text.to_owned()))
}

fn list(pools: &[Pool]) -> String {
    let shown: Vec<String> = pools.iter().map(Pool::to_string).collect();
    shown.join(", ")
}

fn outside(ip: Ipv4Addr, pools: &[Pool]) -> String {
    format!(
        "spec.loadBalancerIP {ip} is not in a LoadBalancer pool ({}); use an address of a pool \
         (the ConfigMap weft-lb-pools or --lb-cidr) or leave loadBalancerIP out to get one",
        list(pools)
    )
}

/// How the allocator runs.
#[derive(Debug, Clone)]
pub struct AllocatorOptions {
    /// This candidate's identity (the node's name).
    pub candidate: String,
    /// How long a leader's Lease lasts unrenewed; the leader renews it
    /// every third of that, the others look every term.
    pub term: Duration,
    /// The `loadBalancerClass` served (`None`: Services without one).
    pub class: Option<String>,
    /// Pools from the command line, before the cluster's.
    pub pools: Vec<Pool>,
}

/// Follows the Services and, while elected, allocates; runs until the
/// Services' watch ends (which a source never does while it lives).
pub async fn run<C: LoadBalancerAllocation>(cluster: C, opts: AllocatorOptions) {
    let mut allocator = Allocator {
        cluster: &cluster,
        opts: &opts,
        services: Cache::new(object_key),
        leading: false,
        next_claim: tokio::time::Instant::now(),
        reported: BTreeMap::new(),
        pools_text: None,
    };
    let mut watch = cluster.watch::<Service>();
    let mut changed = false;
    loop {
        tokio::select! {
            item = watch.next() => match item {
                Some(item) => changed |= allocator.take(item),
                None => {
                    tracing::error!("the Services' watch ended; LoadBalancer allocation stops");
                    return;
                }
            },
            _ = tokio::time::sleep_until(allocator.next_claim) => {
                allocator.claim().await;
                changed = true;
            }
        }
        // Take every event already there before a pass.
        while let Some(Some(item)) = watch.next().now_or_never() {
            changed |= allocator.take(item);
        }
        if changed && allocator.leading && allocator.services.is_synced() {
            changed = false;
            allocator.pass().await;
        }
    }
}

struct Allocator<'a, C> {
    cluster: &'a C,
    opts: &'a AllocatorOptions,
    services: Cache<Service>,
    leading: bool,
    next_claim: tokio::time::Instant,
    /// The problems last logged, so each is said once.
    reported: BTreeMap<String, String>,
    /// The cluster's pools text last refused, said once.
    pools_text: Option<String>,
}

impl<C: LoadBalancerAllocation> Allocator<'_, C> {
    /// Keeps only what allocation needs: LoadBalancer Services and those
    /// still holding an address (a type changed away), so an agent does
    /// not hold a second copy of every Service beside its proxy's.
    fn take(&mut self, item: Result<Event<Service>, ClusterError>) -> bool {
        let relevant = |svc: &Service| is_load_balancer(svc) || !ingress_ips(svc).is_empty();
        match item {
            Ok(Event::InitApply(svc)) if !relevant(&svc) => false,
            Ok(Event::Apply(svc)) if !relevant(&svc) => self.services.apply(Event::Delete(svc)),
            Ok(event) => self.services.apply(event),
            Err(e) => {
                tracing::warn!(error = %e, "watching Services for LoadBalancer allocation failed; retrying");
                false
            }
        }
    }

    /// Takes or renews the leadership; a failure to reach the Lease is
    /// not leading.
    async fn claim(&mut self) {
        let term = self.opts.term;
        let leading = match self.cluster.lead(&self.opts.candidate, term).await {
            Ok(leading) => leading,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the LoadBalancer allocator's Lease");
                false
            }
        };
        if leading != self.leading {
            tracing::info!(
                leading,
                "LoadBalancer address allocation {}",
                if leading {
                    "is now done by this node"
                } else {
                    "is left to another node"
                }
            );
            self.reported.clear();
        }
        self.leading = leading;
        let wait = if leading { term / 3 } else { term };
        self.next_claim = tokio::time::Instant::now() + wait;
    }

    async fn pass(&mut self) {
        let Some(pools) = self.pools().await else {
            return;
        };
        let class = self.opts.class.as_deref();
        let plan = plan(self.services.values(), &pools, class);
        for write in &plan.writes {
            let service = format!("{}/{}", write.namespace, write.name);
            tracing::info!(%service, ips = ?write.ips, "setting the LoadBalancer address");
            match self
                .cluster
                .set_load_balancer_ingress(&write.namespace, &write.name, &write.ips)
                .await
            {
                Ok(()) => {
                    self.record(&service, AllocationEvent::Allocated(write.ips.clone()))
                        .await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LoadBalancer address not written; retried on the next pass");
                    // Come back soon rather than at the next change.
                    self.next_claim = tokio::time::Instant::now() + Duration::from_secs(1);
                }
            }
        }
        for (service, problem) in &plan.problems {
            if self.reported.get(service) != Some(problem) {
                tracing::warn!(%service, "no LoadBalancer address: {problem}");
                self.record(service, AllocationEvent::Failed(problem.clone()))
                    .await;
            }
        }
        self.reported = plan.problems;
    }

    /// Records `event` on the Service `key` (`namespace/name`); a failure
    /// only costs the Event.
    async fn record(&self, key: &str, event: AllocationEvent) {
        let Some(service) = self.services.values().find(|s| object_key(*s) == key) else {
            return;
        };
        if let Err(e) = self.cluster.record(service, event).await {
            tracing::warn!(service = key, error = %e, "cannot record an Event on the Service");
        }
    }

    /// The flag's pools and the cluster's; `None` (no pass) when there are
    /// none or the cluster's cannot be read or parsed: addresses are never
    /// taken away because of a typo or an outage.
    async fn pools(&mut self) -> Option<Vec<Pool>> {
        let text = match self.cluster.load_balancer_pools().await {
            Ok(text) => text.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "LoadBalancer pools not read; allocation waits");
                return None;
            }
        };
        let mut pools = self.opts.pools.clone();
        match parse_pools(&text) {
            Ok(more) => pools.extend(more),
            Err(e) => {
                if self.pools_text.as_ref() != Some(&text) {
                    tracing::warn!("{e}; LoadBalancer allocation waits until the ConfigMap weft-lb-pools is fixed");
                    self.pools_text = Some(text);
                }
                return None;
            }
        }
        let waiting: BTreeSet<String> = self
            .services
            .values()
            .filter(|s| served(s, self.opts.class.as_deref()) && ingress_ips(s).is_empty())
            .map(object_key)
            .collect();
        if pools.is_empty() && !waiting.is_empty() && self.pools_text.as_deref() != Some("") {
            tracing::warn!(services = ?waiting, "LoadBalancer Services wait for an address: no pool is configured (the ConfigMap weft-lb-pools, key pools, in weft's namespace, or --lb-cidr)");
            self.pools_text = Some(String::new());
        }
        (!pools.is_empty()).then_some(pools)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;
    use serde_json::json;
    use std::any::Any;
    use std::sync::{Arc, Mutex};
    use weft_cluster::{Cluster, EventStream, Watched};

    fn pools(text: &str) -> Vec<Pool> {
        parse_pools(text).unwrap()
    }

    fn service(name: &str, created: &str, spec: serde_json::Value, ingress: &[&str]) -> Service {
        let ingress: Vec<_> = ingress.iter().map(|ip| json!({"ip": ip})).collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
            "spec": spec,
            "status": {"loadBalancer": {"ingress": ingress}},
        }))
        .unwrap()
    }

    fn lb(name: &str, created: &str, ingress: &[&str]) -> Service {
        service(name, created, json!({"type": "LoadBalancer"}), ingress)
    }

    fn written(plan: &Plan) -> Vec<(String, Vec<String>)> {
        plan.writes
            .iter()
            .map(|w| {
                (
                    w.name.clone(),
                    w.ips.iter().map(|ip| ip.to_string()).collect(),
                )
            })
            .collect()
    }

    const T0: &str = "2026-12-01T00:00:00Z";
    const T1: &str = "2026-12-01T00:00:01Z";
    const T2: &str = "2026-12-01T00:00:02Z";

    #[test]
    fn pools_are_cidrs_or_ranges_with_comments() {
        let parsed =
            pools("198.18.100.0/30 # two usable\n198.18.101.5-198.18.101.6, 198.18.102.7/32\n\n");
        let shown: Vec<String> = parsed.iter().map(Pool::to_string).collect();
        assert_eq!(
            shown,
            [
                "198.18.100.1-198.18.100.2",
                "198.18.101.5-198.18.101.6",
                "198.18.102.7-198.18.102.7"
            ]
        );
        assert_eq!(pools("  # nothing\n"), vec![]);
    }

    #[test]
    fn bad_pools_say_what_to_write() {
        for bad in [
            "198.18.100.1/24",
            "198.18.100.9-198.18.100.1",
            "fd00::/64",
            "pool-a",
        ] {
            let e = parse_pools(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("198.18.100.0/24"), "{e}");
        }
    }

    #[test]
    fn services_get_the_lowest_free_address_oldest_first() {
        let services = [
            lb("young", T2, &[]),
            lb("old", T0, &[]),
            lb("kept", T1, &["198.18.100.1"]),
        ];
        let plan = plan(&services, &pools("198.18.100.0/29"), None);
        assert_eq!(
            written(&plan),
            [
                ("young".to_string(), vec!["198.18.100.3".to_string()]),
                ("old".to_string(), vec!["198.18.100.2".to_string()]),
            ]
        );
        assert!(plan.problems.is_empty());
    }

    #[test]
    fn a_settled_cluster_needs_no_write() {
        let services = [
            lb("a", T0, &["198.18.100.1"]),
            lb("b", T1, &["198.18.100.2"]),
        ];
        assert_eq!(
            plan(&services, &pools("198.18.100.0/29"), None),
            Plan::default()
        );
    }

    #[test]
    fn an_address_asked_for_must_be_in_a_pool_and_free() {
        let asked = |name, created, ip: &str| {
            service(
                name,
                created,
                json!({"type": "LoadBalancer", "loadBalancerIP": ip}),
                &[],
            )
        };
        let services = [
            asked("first", T0, "198.18.100.5"),
            asked("second", T1, "198.18.100.5"),
            asked("outside", T1, "198.18.200.1"),
            asked("garbage", T2, "not-an-ip"),
        ];
        let plan = plan(&services, &pools("198.18.100.0/29"), None);
        assert_eq!(
            written(&plan),
            [("first".to_string(), vec!["198.18.100.5".to_string()])]
        );
        assert!(plan.problems["default/second"].contains("already used by Service default/first"));
        assert!(plan.problems["default/outside"]
            .contains("not in a LoadBalancer pool (198.18.100.1-198.18.100.6)"));
        assert!(plan.problems["default/garbage"].contains("not an IPv4 address"));
    }

    #[test]
    fn a_request_takes_precedence_over_a_younger_services_kept_address() {
        let services = [
            service(
                "asks",
                T0,
                json!({"type": "LoadBalancer", "loadBalancerIP": "198.18.100.1"}),
                &[],
            ),
            lb("holds", T1, &["198.18.100.1"]),
        ];
        let plan = plan(&services, &pools("198.18.100.0/29"), None);
        assert_eq!(
            written(&plan),
            [
                ("asks".to_string(), vec!["198.18.100.1".to_string()]),
                ("holds".to_string(), vec!["198.18.100.2".to_string()]),
            ]
        );
    }

    #[test]
    fn when_the_pools_run_out_the_youngest_waits_and_says_why() {
        let services = [lb("a", T0, &[]), lb("b", T1, &[]), lb("c", T2, &[])];
        let plan = plan(&services, &pools("198.18.100.1-198.18.100.2"), None);
        assert_eq!(written(&plan).len(), 2);
        assert!(plan.problems["default/c"].contains("no free address left"));
    }

    #[test]
    fn an_address_outside_the_pools_is_replaced() {
        let services = [lb("moved", T0, &["198.18.50.1"])];
        let plan = plan(&services, &pools("198.18.100.0/29"), None);
        assert_eq!(
            written(&plan),
            [("moved".to_string(), vec!["198.18.100.1".to_string()])]
        );
    }

    #[test]
    fn other_classes_are_left_alone_and_a_former_load_balancer_loses_its_address() {
        let services = [
            service(
                "other",
                T0,
                json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"}),
                &["198.18.100.1"],
            ),
            service(
                "was-lb",
                T1,
                json!({"type": "ClusterIP"}),
                &["198.18.100.2"],
            ),
            service("plain", T1, json!({"type": "ClusterIP"}), &[]),
        ];
        let plan = plan(&services, &pools("198.18.100.0/29"), None);
        assert_eq!(written(&plan), [("was-lb".to_string(), vec![])]);
        // An allocator of that class serves only it.
        let plan = super::plan(&services, &pools("198.18.100.0/29"), Some("example.com/lb"));
        assert_eq!(written(&plan), [("was-lb".to_string(), vec![])]);
        let unclassed = [lb("plain-lb", T0, &[])];
        assert_eq!(
            super::plan(
                &unclassed,
                &pools("198.18.100.0/29"),
                Some("example.com/lb")
            ),
            Plan::default()
        );
    }

    /// A cluster fed by the test: Services through a channel (a write to a
    /// status comes back as an update, as from an API server), the
    /// leadership as set, the writes recorded.
    #[derive(Clone)]
    struct Fake {
        watch: Arc<Mutex<Option<Box<dyn Any + Send>>>>,
        feed: mpsc::UnboundedSender<Event<Service>>,
        stored: Arc<Mutex<BTreeMap<String, Service>>>,
        leading: bool,
        writes: Arc<Mutex<Vec<Written>>>,
        events: Arc<Mutex<Vec<(String, AllocationEvent)>>>,
    }

    /// A Service's name and the addresses written to its status.
    type Written = (String, Vec<Ipv4Addr>);

    impl Fake {
        fn new(leading: bool) -> Fake {
            let (feed, rx) = mpsc::unbounded();
            let stream: EventStream<Service> = rx.map(Ok).boxed();
            Fake {
                watch: Arc::new(Mutex::new(Some(Box::new(stream)))),
                feed,
                stored: Arc::default(),
                leading,
                writes: Arc::default(),
                events: Arc::default(),
            }
        }

        /// Sends `events`, then gives the allocator time to act; every
        /// write so far.
        async fn writes_after(&self, events: Vec<Event<Service>>) -> Vec<Written> {
            for event in events {
                if let Event::InitApply(svc) | Event::Apply(svc) = &event {
                    let name = svc.metadata.name.clone().unwrap();
                    self.stored.lock().unwrap().insert(name, svc.clone());
                }
                self.feed.unbounded_send(event).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.writes.lock().unwrap().clone()
        }
    }

    impl Cluster for Fake {
        fn watch_without<K: Watched>(&self, _: &'static [&'static str]) -> EventStream<K> {
            let stream = self.watch.lock().unwrap().take().expect("one watch");
            *stream.downcast::<EventStream<K>>().expect("only Services")
        }

        fn problem(&self) -> Option<String> {
            None
        }
    }

    impl LoadBalancerAllocation for Fake {
        async fn lead(&self, _: &str, _: Duration) -> Result<bool, ClusterError> {
            Ok(self.leading)
        }

        async fn load_balancer_pools(&self) -> Result<Option<String>, ClusterError> {
            Ok(Some("198.18.100.0/30".into()))
        }

        async fn set_load_balancer_ingress(
            &self,
            _: &str,
            name: &str,
            ips: &[Ipv4Addr],
        ) -> Result<(), ClusterError> {
            self.writes
                .lock()
                .unwrap()
                .push((name.into(), ips.to_vec()));
            let mut stored = self.stored.lock().unwrap();
            let svc = stored.get_mut(name).expect("a Service the test sent");
            let ingress: Vec<_> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
            svc.status =
                serde_json::from_value(json!({"loadBalancer": {"ingress": ingress}})).unwrap();
            self.feed.unbounded_send(Event::Apply(svc.clone())).unwrap();
            Ok(())
        }

        async fn record(
            &self,
            service: &Service,
            event: AllocationEvent,
        ) -> Result<(), ClusterError> {
            let name = service.metadata.name.clone().unwrap();
            self.events.lock().unwrap().push((name, event));
            Ok(())
        }
    }

    fn options(pools: &str) -> AllocatorOptions {
        AllocatorOptions {
            candidate: "node-a".into(),
            term: Duration::from_millis(300),
            class: None,
            pools: parse_pools(pools).unwrap(),
        }
    }

    fn ips(text: &str) -> Vec<Ipv4Addr> {
        vec![text.parse().unwrap()]
    }

    #[tokio::test]
    async fn the_leader_writes_addresses_from_the_flag_and_cluster_pools_once_listed() {
        let fake = Fake::new(true);
        let task = tokio::spawn(run(fake.clone(), options("198.18.99.7/32")));
        let listing = vec![
            Event::Init,
            Event::InitApply(lb("a", T0, &[])),
            Event::InitApply(lb("b", T1, &[])),
        ];
        assert_eq!(fake.writes_after(listing).await, [], "not listed yet");
        let listed = [
            ("a".to_string(), ips("198.18.99.7")),
            ("b".to_string(), ips("198.18.100.1")),
        ];
        assert_eq!(fake.writes_after(vec![Event::InitDone]).await, listed);
        // Written and seen back: nothing more to do, on events or ticks.
        let more = fake
            .writes_after(vec![Event::Apply(lb("c", T2, &[]))])
            .await;
        assert_eq!(more[2..], [("c".to_string(), ips("198.18.100.2"))]);
        // The pools are used up: the next one waits, and says why once.
        fake.writes_after(vec![Event::Apply(lb("d", T2, &[]))])
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events = fake.events.lock().unwrap().clone();
        assert_eq!(
            events[0],
            (
                "a".to_string(),
                AllocationEvent::Allocated(ips("198.18.99.7"))
            )
        );
        let failed: Vec<_> = events
            .iter()
            .filter(|(_, e)| matches!(e, AllocationEvent::Failed(_)))
            .collect();
        assert_eq!(failed.len(), 1, "{events:?}");
        assert_eq!(failed[0].0, "d");
        task.abort();
    }

    #[tokio::test]
    async fn only_load_balancers_are_kept_and_a_former_one_loses_its_address() {
        let fake = Fake::new(true);
        let task = tokio::spawn(run(fake.clone(), options("")));
        let plain = service("plain", T0, json!({"type": "ClusterIP"}), &[]);
        let listing = vec![
            Event::Init,
            Event::InitApply(plain),
            Event::InitApply(lb("a", T0, &[])),
            Event::InitDone,
        ];
        fake.writes_after(listing).await;
        // `a` becomes a ClusterIP Service still holding its address.
        let was = service("a", T0, json!({"type": "ClusterIP"}), &["198.18.100.1"]);
        let writes = fake.writes_after(vec![Event::Apply(was)]).await;
        assert_eq!(
            writes.last(),
            Some(&("a".to_string(), vec![])),
            "{writes:?}"
        );
        task.abort();
    }

    #[tokio::test]
    async fn a_candidate_that_does_not_lead_writes_nothing() {
        let fake = Fake::new(false);
        let task = tokio::spawn(run(fake.clone(), options("")));
        let listing = vec![
            Event::Init,
            Event::InitApply(lb("a", T0, &[])),
            Event::InitDone,
        ];
        assert_eq!(fake.writes_after(listing).await, []);
        task.abort();
    }
}
