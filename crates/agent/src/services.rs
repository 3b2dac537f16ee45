//! The agent's view of Services and EndpointSlices: a compact cache fed by
//! list + watch events, answering "what does Service X need now" (pure, no
//! kernel, no store).
//!
//! Only the reduced model is kept (ports, addresses, endpoints) — never the
//! API objects — so 10,000 Services fit in a few tens of megabytes. A Service
//! is re-planned when it or any of its slices changes, whichever arrives
//! first.
//!
//! It also applies the externalIP rules of [`weft_proxy::external`], which
//! look across Services: the ClusterIPs and healthCheckNodePorts of all of
//! them and the nodes' addresses. When one of those changes, every Service
//! with externalIPs is re-planned; refused externalIPs are logged once per
//! change of the reasons.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use weft_cluster::cache::Relist;
use weft_cluster::Event;
use weft_proxy::external::{ExternalIpPolicy, Refused};
use weft_proxy::model::{
    self, endpoints_by_port, PackedEndpoints, Place, PortEndpoints, ServiceInfo, ServiceKey,
    Skipped, SERVICE_NAME_LABEL,
};
use weft_proxy::plan::{plan_service, NodeContext, ServiceRules};

/// A slice's namespace and name (the same shape as a Service's key).
type SliceId = ServiceKey;

#[derive(Default)]
pub struct ServiceState {
    services: HashMap<ServiceKey, Result<ServiceInfo, Skipped>>,
    slices: HashMap<SliceId, (ServiceKey, PackedEndpoints)>,
    /// Each Service's slice names (usually one).
    slices_of: HashMap<ServiceKey, Vec<Arc<str>>>,
    /// Endpoints' places (node, hints), one copy each, shared.
    places: HashSet<Arc<Place>>,
    /// The externalIP rules; its reserved ports are the agent's own plus
    /// every healthCheckNodePort.
    policy: ExternalIpPolicy,
    agent_ports: BTreeSet<u16>,
    /// How many Services use each ClusterIP and healthCheckNodePort.
    cluster_ips: HashMap<Ipv4Addr, usize>,
    health_node_ports: HashMap<u16, usize>,
    /// Services with externalIPs: re-planned when the rules' inputs change.
    with_external_ips: BTreeSet<ServiceKey>,
    /// Set when a ClusterIP or healthCheckNodePort came or went.
    external_inputs_changed: bool,
    /// The refusals last logged per Service.
    refusals: HashMap<ServiceKey, Vec<Refused>>,
    /// Re-lists in progress.
    listing_services: Relist<ServiceKey>,
    listing_slices: Relist<SliceId>,
}

impl ServiceState {
    /// An empty cache whose externalIPs must lie in `allowed` (empty: any
    /// address) and keep off `agent_ports` (TCP ports the agent serves).
    pub fn new(allowed: Vec<Ipv4Net>, agent_ports: BTreeSet<u16>) -> Self {
        ServiceState {
            policy: ExternalIpPolicy {
                allowed,
                reserved_ports: agent_ports.clone(),
                ..ExternalIpPolicy::default()
            },
            agent_ports,
            ..ServiceState::default()
        }
    }

    /// Takes in one Service watch event; returns the Services to re-plan.
    pub fn service_event(&mut self, event: Event<Service>) -> BTreeSet<ServiceKey> {
        let mut dirty = BTreeSet::new();
        match event {
            Event::Init => self.listing_services.start(),
            Event::InitApply(svc) => {
                let key = self.service(&svc, false);
                self.listing_services.listed(key.clone());
                dirty.insert(key);
            }
            Event::InitDone => {
                for key in self.listing_services.finish(self.services.keys()) {
                    self.remove_service(&key);
                    dirty.insert(key);
                }
            }
            Event::Apply(svc) => {
                dirty.insert(self.service(&svc, false));
            }
            Event::Delete(svc) => {
                dirty.insert(self.service(&svc, true));
            }
        }
        self.with_consequences(dirty)
    }

    /// Takes in one EndpointSlice watch event; returns the Services to
    /// re-plan.
    pub fn slice_event(&mut self, event: Event<EndpointSlice>) -> BTreeSet<ServiceKey> {
        let mut dirty = BTreeSet::new();
        match event {
            Event::Init => self.listing_slices.start(),
            Event::InitApply(slice) => {
                self.listing_slices.listed(ServiceKey::of(&slice.metadata));
                dirty.extend(self.slice(&slice, false));
            }
            Event::InitDone => {
                for id in self.listing_slices.finish(self.slices.keys()) {
                    dirty.extend(self.unlink_slice(&id));
                }
            }
            Event::Apply(slice) => dirty.extend(self.slice(&slice, false)),
            Event::Delete(slice) => dirty.extend(self.slice(&slice, true)),
        }
        self.with_consequences(dirty)
    }

    /// Whether either kind is being listed: until both lists are done the
    /// state may miss objects, so nothing should be applied from it.
    pub fn is_listing(&self) -> bool {
        self.listing_services.is_listing() || self.listing_slices.is_listing()
    }

    /// `dirty` plus the Services a change of the externalIP rules' inputs
    /// re-plans (checked once a list is complete, not per listed object).
    fn with_consequences(&mut self, mut dirty: BTreeSet<ServiceKey>) -> BTreeSet<ServiceKey> {
        if self.is_listing() {
            return dirty;
        }
        if std::mem::take(&mut self.external_inputs_changed) {
            dirty.extend(self.with_external_ips.iter().cloned());
        }
        if dirty.iter().any(|k| self.with_external_ips.contains(k)) {
            self.log_refusals();
        }
        dirty
    }

    /// Takes in a Service (or its deletion); returns the Service to re-plan.
    pub fn service(&mut self, svc: &Service, deleted: bool) -> ServiceKey {
        let key = self.shared(ServiceKey::of(&svc.metadata));
        if deleted {
            self.remove_service(&key);
            return key;
        }
        self.uncount_service(&key);
        let info = model::service_info(svc).map(|info| ServiceInfo {
            key: key.clone(),
            ..info
        });
        if let Err(why) = &info {
            let said = self.services.get(&key).and_then(|i| i.as_ref().err());
            if said != Some(why) {
                log_skipped(&key, why);
            }
        }
        if let Ok(now) = &info {
            self.count_external_inputs(now.cluster_ip, now.health_check_node_port, true);
            if now.ports.iter().any(|p| !p.external_ips.is_empty()) {
                self.with_external_ips.insert(key.clone());
            }
        }
        self.services.insert(key.clone(), info);
        key
    }

    /// The Services left out because they are broken, with the reason.
    pub fn faulty(&self) -> BTreeMap<ServiceKey, String> {
        self.services
            .iter()
            .filter_map(|(key, info)| match info {
                Err(why) if why.is_fault() => Some((key.clone(), why.to_string())),
                _ => None,
            })
            .collect()
    }

    fn remove_service(&mut self, key: &ServiceKey) {
        self.uncount_service(key);
        self.services.remove(key);
        self.refusals.remove(key);
    }

    /// Takes a held Service out of the externalIP rules' inputs.
    fn uncount_service(&mut self, key: &ServiceKey) {
        if let Some(Ok(old)) = self.services.get(key) {
            let (ip, port) = (old.cluster_ip, old.health_check_node_port);
            self.count_external_inputs(ip, port, false);
        }
        self.with_external_ips.remove(key);
    }

    /// Counts a Service's ClusterIP and healthCheckNodePort in or out.
    fn count_external_inputs(&mut self, ip: Option<Ipv4Addr>, port: Option<u16>, add: bool) {
        let changed_ip = ip.is_some_and(|ip| count(&mut self.cluster_ips, ip, add));
        let changed_port = port.is_some_and(|port| count(&mut self.health_node_ports, port, add));
        if changed_port {
            self.policy.reserved_ports = self
                .agent_ports
                .iter()
                .chain(self.health_node_ports.keys())
                .copied()
                .collect();
        }
        self.external_inputs_changed |= changed_ip || changed_port;
    }

    /// Sets the addresses of every node (and this node's own); returns the
    /// Services to re-plan (those with externalIPs, when they changed).
    pub fn set_node_addresses(&mut self, addresses: BTreeSet<Ipv4Addr>) -> BTreeSet<ServiceKey> {
        if addresses == self.policy.node_addresses {
            return BTreeSet::new();
        }
        self.policy.node_addresses = addresses;
        self.log_refusals();
        self.with_external_ips.clone()
    }

    /// Logs, for each Service with externalIPs, the ones refused, when the
    /// reasons differ from those logged before.
    pub fn log_refusals(&mut self) {
        let keys: Vec<ServiceKey> = self.with_external_ips.iter().cloned().collect();
        for key in keys {
            let Some(mut info) = self.info(&key).cloned() else {
                continue;
            };
            let refused = self.admit(&mut info);
            if self.refusals.get(&key) == Some(&refused) {
                continue;
            }
            for why in &refused {
                tracing::warn!(service = %key, "{why}; not programmed for this Service");
            }
            self.refusals.insert(key, refused);
        }
    }

    /// Drops the externalIPs `info` may not use; returns why.
    fn admit(&self, info: &mut ServiceInfo) -> Vec<Refused> {
        self.policy
            .admit(info, |ip| self.cluster_ips.contains_key(&ip))
    }

    /// Takes in an EndpointSlice (or its deletion); returns the Services to
    /// re-plan (two when a slice moved between Services).
    pub fn slice(&mut self, slice: &EndpointSlice, deleted: bool) -> Vec<ServiceKey> {
        let id: SliceId = ServiceKey::of(&slice.metadata);
        let mut touched: Vec<ServiceKey> = self.unlink_slice(&id).into_iter().collect();
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (false, Some(service)) = (deleted, owner) {
            let key = self.shared(ServiceKey {
                namespace: id.namespace.clone(),
                name: service.as_str().into(),
            });
            self.slices_of
                .entry(key.clone())
                .or_default()
                .push(id.name.clone());
            let mut endpoints = endpoints_by_port(&[slice]);
            for ep in endpoints.values_mut().flatten() {
                ep.place = self.shared_place(ep.place.clone());
            }
            self.slices
                .insert(id, (key.clone(), model::pack(endpoints)));
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        touched
    }

    /// Forgets a slice; returns the Service it belonged to.
    fn unlink_slice(&mut self, id: &SliceId) -> Option<ServiceKey> {
        let (owner, _) = self.slices.remove(id)?;
        if let Some(names) = self.slices_of.get_mut(&owner) {
            names.retain(|n| *n != id.name);
            if names.is_empty() {
                self.slices_of.remove(&owner);
            }
        }
        Some(owner)
    }

    /// The copy of `key` already held (keys are kept in several indexes).
    fn shared(&self, key: ServiceKey) -> ServiceKey {
        self.services
            .get_key_value(&key)
            .map(|(k, _)| k)
            .or_else(|| self.slices_of.get_key_value(&key).map(|(k, _)| k))
            .cloned()
            .unwrap_or(key)
    }

    /// The shared copy of an endpoint's place.
    fn shared_place(&mut self, place: Arc<Place>) -> Arc<Place> {
        if let Some(known) = self.places.get(&place) {
            return known.clone();
        }
        self.places.insert(place.clone());
        place
    }

    pub fn info(&self, key: &ServiceKey) -> Option<&ServiceInfo> {
        self.services.get(key).and_then(|r| r.as_ref().ok())
    }

    /// All endpoints of a Service, merged from its slices.
    pub fn endpoints(&self, key: &ServiceKey) -> PortEndpoints {
        let parts = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|name| {
                self.slices.get(&SliceId {
                    namespace: key.namespace.clone(),
                    name: name.clone(),
                })
            })
            .map(|(_, eps)| eps);
        model::merge(parts)
    }

    /// What Service `key` needs in the table now; `None` when it is not
    /// programmed (gone, headless, another proxy's, …).
    pub fn plan(&self, key: &ServiceKey, ctx: &NodeContext) -> Option<ServiceRules> {
        let info = self.info(key)?;
        let endpoints = self.endpoints(key);
        if !self.with_external_ips.contains(key) {
            return Some(plan_service(info, &endpoints, ctx));
        }
        let mut info = info.clone();
        self.admit(&mut info);
        Some(plan_service(&info, &endpoints, ctx))
    }

    /// Every programmed Service, planned one at a time (for a full sync).
    pub fn plan_all<'a>(
        &'a self,
        ctx: &'a NodeContext,
    ) -> impl Iterator<Item = (ServiceKey, ServiceRules)> + 'a {
        self.services
            .keys()
            .filter_map(move |k| Some((k.clone(), self.plan(k, ctx)?)))
    }

    /// healthCheckNodePort → (Service, its usable endpoints on `node`).
    pub fn health_ports(&self, node: &str) -> BTreeMap<u16, (ServiceKey, usize)> {
        let mut out = BTreeMap::new();
        for (key, info) in self
            .services
            .iter()
            .filter_map(|(k, i)| Some((k, i.as_ref().ok()?)))
        {
            let Some(port) = info.health_check_node_port else {
                continue;
            };
            // Ready ones only, as kube-proxy: a node whose last local
            // endpoint terminates answers 503, so load balancers drain it.
            let eps = self.endpoints(key);
            let local: BTreeSet<_> = eps
                .values()
                .flatten()
                .filter(|e| e.is_local(node) && e.ready)
                .map(|e| e.ip)
                .collect();
            out.insert(port, (key.clone(), local.len()));
        }
        out
    }

    /// The LoadBalancer addresses of Services of `class` (`None`: those
    /// without a `loadBalancerClass`; another class is another
    /// implementation's to announce) and the nodes allowed to announce
    /// each: every node, or with `externalTrafficPolicy: Local` only nodes
    /// with a usable local endpoint (`Some(set)`).
    pub fn load_balancer_ips(
        &self,
        class: Option<&str>,
    ) -> BTreeMap<std::net::Ipv4Addr, Option<BTreeSet<String>>> {
        let mut out = BTreeMap::new();
        for (key, info) in self
            .services
            .iter()
            .filter_map(|(k, i)| Some((k, i.as_ref().ok()?)))
            .filter(|(_, i)| i.load_balancer_class.as_deref() == class)
        {
            for port in &info.ports {
                if port.load_balancer_ips.is_empty() {
                    continue;
                }
                let allowed = port.external_local.then(|| {
                    let eps = self.endpoints(key);
                    let list = eps
                        .get(&(port.name.clone(), port.protocol))
                        .cloned()
                        .unwrap_or_default();
                    model::usable(&list)
                        .into_iter()
                        .filter_map(|e| e.node().map(String::from))
                        .collect::<BTreeSet<String>>()
                });
                for ip in &port.load_balancer_ips {
                    out.insert(*ip, allowed.clone());
                }
            }
        }
        out
    }
}

/// Logs why a Service is not programmed: a warning when the Service is
/// broken (the operator has to fix it), a note when skipping it is normal.
fn log_skipped(key: &ServiceKey, why: &Skipped) {
    if why.is_fault() {
        tracing::warn!(service = %key, reason = %why, "Service not proxied");
    } else {
        tracing::info!(service = %key, reason = %why, "Service not proxied");
    }
}

/// Counts `key` in (`add`) or out of `counts`; true when it appeared or
/// vanished.
fn count<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K, add: bool) -> bool {
    if add {
        let n = counts.entry(key).or_default();
        *n += 1;
        return *n == 1;
    }
    let Some(n) = counts.get_mut(&key) else {
        return false;
    };
    *n -= 1;
    if *n == 0 {
        counts.remove(&key);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> NodeContext {
        NodeContext {
            node: "node-1".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            nodeport_addresses: weft_proxy::plan::NodePortAddresses::EveryLocal,
            zone: None,
            service_cidrs: vec![],
        }
    }

    fn svc(extra: serde_json::Value) -> Service {
        let mut v = json!({"metadata": {"namespace": "demo", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}});
        for (k, val) in extra.as_object().cloned().unwrap_or_default() {
            v["spec"][k] = val;
        }
        serde_json::from_value(v).unwrap()
    }

    fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
        let endpoints: Vec<_> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "nodeName": "node-1", "conditions": {"ready": true}}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": "demo", "name": name, "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))
        .unwrap()
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "demo".into(),
            name: name.into(),
        }
    }

    #[test]
    fn either_arrival_order_gives_the_same_plan() {
        let mut a = ServiceState::default();
        a.service(&svc(json!({})), false);
        assert!(
            a.plan(&key("web"), &ctx()).unwrap().chains.is_empty(),
            "no endpoints yet"
        );
        a.slice(&slice("web-1", "web", &["10.244.1.2"]), false);
        let mut b = ServiceState::default();
        assert_eq!(
            b.slice(&slice("web-1", "web", &["10.244.1.2"]), false),
            vec![key("web")]
        );
        assert!(b.plan(&key("web"), &ctx()).is_none(), "no Service yet");
        b.service(&svc(json!({})), false);
        let plan = a.plan(&key("web"), &ctx()).unwrap();
        assert_eq!(plan.picks.len(), 1, "one endpoint: programmed");
        assert_eq!(Some(plan), b.plan(&key("web"), &ctx()));
    }

    #[test]
    fn slices_merge_and_deletions_and_moves_re_plan_the_right_services() {
        let mut s = ServiceState::default();
        s.service(&svc(json!({})), false);
        s.slice(&slice("web-1", "web", &["10.244.1.2"]), false);
        s.slice(&slice("web-2", "web", &["10.244.1.3", "10.244.1.2"]), false);
        assert_eq!(s.endpoints(&key("web")).values().next().unwrap().len(), 2);
        let moved = s.slice(&slice("web-2", "other", &["10.244.1.3"]), false);
        assert_eq!(moved, vec![key("web"), key("other")]);
        assert_eq!(s.endpoints(&key("web")).values().next().unwrap().len(), 1);
        assert_eq!(s.slice(&slice("web-1", "web", &[]), true), vec![key("web")]);
        assert!(s.endpoints(&key("web")).is_empty());
    }

    /// A Service the API server would refuse (written to a store around
    /// it) is left out with the reason; the others are planned, and the
    /// fixed Service is planned again.
    #[test]
    fn an_invalid_service_is_left_out_and_blocks_no_other() {
        let mut s = ServiceState::default();
        let mut bad = svc(json!({"externalIPs": ["198.18.0.99", "not-an-address"]}));
        bad.metadata.name = Some("bad".into());
        s.service(&bad, false);
        s.service(&svc(json!({})), false);
        s.slice(&slice("bad-1", "bad", &["10.244.1.2"]), false);
        s.slice(&slice("web-1", "web", &["10.244.1.3"]), false);
        assert!(s.plan(&key("bad"), &ctx()).is_none());
        let faulty = s.faulty();
        assert_eq!(faulty.keys().collect::<Vec<_>>(), [&key("bad")]);
        let why = &faulty[&key("bad")];
        assert!(
            why.contains("spec.externalIPs[1]") && why.contains("not-an-address"),
            "{why}"
        );
        assert_eq!(s.plan(&key("web"), &ctx()).unwrap().picks.len(), 1);
        bad.spec.as_mut().unwrap().external_ips = Some(vec!["198.18.0.99".into()]);
        s.service(&bad, false);
        assert_eq!(s.plan(&key("bad"), &ctx()).unwrap().picks.len(), 1);
        assert!(s.faulty().is_empty());
    }

    /// Each implementation announces its own class's addresses only (a
    /// MetalLB beside weft would otherwise see weft answer ARP for its).
    #[test]
    fn load_balancer_addresses_are_announced_for_their_class_only() {
        let mut s = ServiceState::default();
        let mut lb = |name: &str, ip: &str, class: Option<&str>| {
            let mut svc = svc(json!({"type": "LoadBalancer", "loadBalancerClass": class}));
            svc.metadata.name = Some(name.into());
            svc.status =
                serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": ip}]}})).unwrap();
            s.service(&svc, false);
        };
        lb("ours", "198.18.0.240", None);
        lb("metallb", "198.18.0.241", Some("metallb.io/metallb"));
        let announced = |class| {
            s.load_balancer_ips(class)
                .into_keys()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(announced(None), ["198.18.0.240"]);
        assert_eq!(announced(Some("metallb.io/metallb")), ["198.18.0.241"]);
        assert!(announced(Some("example.com/other")).is_empty());
    }

    /// What a consumer sees when its watch lists again: a Service and a
    /// slice deleted while it was not watching are gone at `InitDone`, and
    /// nothing is re-planned before the list is complete.
    #[test]
    fn a_relist_removes_what_was_deleted_meanwhile() {
        let mut s = ServiceState::default();
        let other = || -> Service {
            serde_json::from_value(json!({"metadata": {"namespace": "demo", "name": "other"},
                "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}}))
            .unwrap()
        };
        let feed = |s: &mut ServiceState, events: Vec<Event<Service>>| {
            events.into_iter().fold(BTreeSet::new(), |mut dirty, e| {
                dirty.extend(s.service_event(e));
                dirty
            })
        };
        feed(
            &mut s,
            vec![
                Event::Init,
                Event::InitApply(svc(json!({}))),
                Event::InitApply(other()),
                Event::InitDone,
            ],
        );
        s.slice_event(Event::Init);
        s.slice_event(Event::InitApply(slice("web-1", "web", &["10.244.1.2"])));
        s.slice_event(Event::InitDone);
        assert_eq!(s.plan_all(&ctx()).count(), 2);
        assert_eq!(s.endpoints(&key("web")).len(), 1);
        // `other` and the slice were deleted while the stream was re-listing.
        s.service_event(Event::Init);
        assert!(s.is_listing());
        s.service_event(Event::InitApply(svc(json!({}))));
        let dirty = s.service_event(Event::InitDone);
        assert!(dirty.contains(&key("other")), "{dirty:?}");
        assert!(s.plan(&key("other"), &ctx()).is_none());
        s.slice_event(Event::Init);
        let dirty = s.slice_event(Event::InitDone);
        assert_eq!(dirty, [key("web")].into());
        assert!(s.endpoints(&key("web")).is_empty());
        assert!(!s.is_listing());
    }

    #[test]
    fn headless_services_are_not_planned() {
        let mut s = ServiceState::default();
        s.service(&svc(json!({"clusterIP": "None"})), false);
        assert!(s.plan(&key("web"), &ctx()).is_none());
        assert_eq!(s.plan_all(&ctx()).count(), 0);
    }

    #[test]
    fn health_ports_count_local_ready_endpoints() {
        let mut s = ServiceState::default();
        s.service(
            &svc(json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32100})),
            false,
        );
        s.slice(&slice("web-1", "web", &["10.244.1.2", "10.244.1.3"]), false);
        assert_eq!(s.health_ports("node-1")[&32100], (key("web"), 2));
        assert_eq!(s.health_ports("node-2")[&32100], (key("web"), 0));
        // The last local endpoint terminating (still serving): 0, so a
        // load balancer drains the node, as with kube-proxy.
        let terminating: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "demo", "name": "web-1", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.2"], "nodeName": "node-1",
                "conditions": {"ready": false, "serving": true, "terminating": true}}]
        }))
        .unwrap();
        s.slice(&terminating, false);
        assert_eq!(s.health_ports("node-1")[&32100], (key("web"), 0));
    }

    fn added(namespace: &str, name: &str, spec: serde_json::Value) -> Event<Service> {
        Event::Apply(
            serde_json::from_value(
                json!({"metadata": {"namespace": namespace, "name": name}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    fn external_ips_planned(s: &ServiceState, namespace: &str, name: &str) -> Vec<String> {
        let key = ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        };
        let plan = s.plan(&key, &ctx()).unwrap();
        plan.elements
            .iter()
            .map(|e| e.key.clone())
            .filter(|k| k.starts_with("198.") || k.starts_with("10.96.0.10 "))
            .collect()
    }

    fn thief() -> Event<Service> {
        added(
            "other",
            "thief",
            json!({"clusterIP": "10.96.9.9", "externalIPs": ["10.96.0.10", "198.18.0.3", "198.19.0.50"],
                "ports": [{"name": "http", "port": 80}]}),
        )
    }

    fn victim() -> Event<Service> {
        added(
            "demo",
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
        )
    }

    #[test]
    fn an_external_ip_never_shadows_a_cluster_ip_in_either_arrival_order() {
        let mut s = ServiceState::new(vec![], [10254].into());
        s.service_event(victim());
        s.service_event(thief());
        let thief_ips = external_ips_planned(&s, "other", "thief");
        assert_eq!(
            thief_ips,
            vec!["198.18.0.3 . tcp . 80", "198.19.0.50 . tcp . 80"]
        );

        let mut s = ServiceState::new(vec![], [10254].into());
        s.service_event(thief());
        assert_eq!(
            external_ips_planned(&s, "other", "thief").len(),
            3,
            "no victim yet"
        );
        let dirty = s.service_event(victim());
        assert!(
            dirty.contains(&ServiceKey {
                namespace: "other".into(),
                name: "thief".into()
            }),
            "{dirty:?}"
        );
        assert_eq!(external_ips_planned(&s, "other", "thief").len(), 2);
    }

    #[test]
    fn node_addresses_and_the_allow_list_refuse_external_ips() {
        let mut s = ServiceState::new(vec!["198.18.0.0/24".parse().unwrap()], [10254].into());
        s.service_event(thief());
        let thief_key = ServiceKey {
            namespace: "other".into(),
            name: "thief".into(),
        };
        assert_eq!(
            external_ips_planned(&s, "other", "thief"),
            vec!["198.18.0.3 . tcp . 80"]
        );
        assert_eq!(
            s.set_node_addresses(["198.18.0.3".parse().unwrap()].into()),
            [thief_key].into()
        );
        assert!(external_ips_planned(&s, "other", "thief").is_empty());
        assert!(
            s.set_node_addresses(["198.18.0.3".parse().unwrap()].into())
                .is_empty(),
            "unchanged"
        );
    }

    #[test]
    fn health_ports_are_kept_from_external_ips() {
        let mut s = ServiceState::new(vec![], [10254].into());
        let on_health = added(
            "other",
            "thief",
            json!({"clusterIP": "10.96.9.9", "externalIPs": ["198.19.0.50"],
            "ports": [{"name": "a", "port": 10254}, {"name": "b", "port": 32100}, {"name": "http", "port": 80}]}),
        );
        s.service_event(on_health);
        assert_eq!(
            external_ips_planned(&s, "other", "thief").len(),
            2,
            "10254 is the agent's own port"
        );
        let lb = added(
            "demo",
            "lb",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.20",
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 32100, "ports": [{"port": 81}]}),
        );
        let dirty = s.service_event(lb);
        assert_eq!(dirty.len(), 2, "{dirty:?}");
        assert_eq!(
            external_ips_planned(&s, "other", "thief"),
            vec!["198.19.0.50 . tcp . 80"]
        );
    }
}
