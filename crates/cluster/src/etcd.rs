//! flannel's etcd subnet manager, in flannel's layout exactly, so that
//! flanneld and weft agents can share one etcd (and a node can move from
//! one to the other keeping its subnet):
//! - the network config (net-conf.json's text) at `<prefix>/config`;
//! - one key per node lease at `<prefix>/subnets/<a.b.c.d>-<len>`
//!   (dual-stack keys, `…&<ipv6>-<len>`, are read for their IPv4 part),
//!   whose value is flannel's LeaseAttrs JSON (`PublicIP`, `BackendType`,
//!   `BackendData`, …) bound to an etcd lease of the lease TTL (24 h);
//! - a key without an etcd lease is a reservation: it is never taken by
//!   another node;
//! - a new lease is created only if its key does not exist (one
//!   transaction; a lost race is chosen again), a renewal puts the key
//!   again under a new etcd lease, only while it is still this node's;
//! - leases are followed from the revision they were listed at, listed
//!   again when the watch ends (compacted, cancelled, connection lost);
//!   a key that changes hands is its former node leaving first.
//!
//! A node finds its own lease as flanneld does, by its public IP (one the
//! network config no longer allows is replaced). weft adds its node name
//! to the value ([`NODE_FIELD`]; flanneld ignores fields it does not
//! know); a flanneld node's lease is named by its public IP.
//!
//! [`Etcd`] alone is a cluster of leases only; [`EtcdLeases`] adds a
//! kube-apiserver's objects. The layout is pure ([`subnet_key`],
//! [`parse_subnet_key`], [`LeaseAttrs`], [`lease_of`]); the rest talks to
//! etcd and decides nothing.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use futures::StreamExt;
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::leases::{BackendData, LeaseRequest, NodePublication, SubnetLease, SubnetManager};
use crate::{
    Cluster, ClusterError, Event, EventStream, Liveness, Problem, Warning, Warnings, Watched,
    RETRY_PAUSE,
};

/// flannel's default prefix (`--etcd-prefix`).
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// The field of a lease's value where weft names its node.
pub const NODE_FIELD: &str = "weft.dev/node";

/// Where the etcd cluster is and how to reach it.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The lease this node holds: what renewing it puts again.
#[derive(Debug, Clone)]
struct Held {
    key: String,
    value: String,
    /// A reservation is put again without an etcd lease.
    reserved: bool,
}

/// flannel's etcd layout, as a [`SubnetManager`].
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    held: Arc<Mutex<Option<Held>>>,
    /// The last failure of the leases' watch, until it works again.
    problem: Problem,
}

fn etcd_error(what: &str, e: etcd_client::Error) -> ClusterError {
    let text = format!("{e:?}");
    ClusterError::Etcd(format!("etcd: {what}: {e}{}", tls_hint(&text)))
}

/// What to do about a TLS handshake etcd or this side refused, from the
/// error's text (the TLS library's alert names).
fn tls_hint(error: &str) -> &'static str {
    if error.contains("CertificateRequired") {
        " (etcd asks for a client certificate: give --etcd-certfile and --etcd-keyfile)"
    } else if error.contains("UnknownIssuer") || error.contains("BadSignature") {
        " (etcd's certificate is not signed by the CA of --etcd-cafile)"
    } else if error.contains("UnknownCA") || error.contains("BadCertificate") {
        " (etcd does not accept the client certificate: is --etcd-certfile signed by etcd's --trusted-ca-file?)"
    } else {
        ""
    }
}

impl Etcd {
    /// Connects to `config.endpoints` (TLS when a CA or client certificate
    /// is given).
    pub async fn connect(config: &EtcdConfig) -> Result<Etcd, ClusterError> {
        // Keepalives find a dead connection (a watch would wait forever);
        // requiring a leader makes a member cut off from quorum fail the
        // watch, which is then listed again elsewhere, as flanneld does.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if config.ca_file.is_some() || config.cert_file.is_some() {
            options = options.with_tls(tls(config)?);
        }
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| {
                etcd_error(
                    &format!("connecting to etcd at {}", config.endpoints.join(",")),
                    e,
                )
            })?;
        Ok(Etcd {
            client,
            prefix: config.prefix.trim_end_matches('/').to_string(),
            held: Arc::default(),
            problem: Problem::default(),
        })
    }

    /// The network config (`<prefix>/config`): net-conf.json's text.
    pub async fn network_config(&self) -> Result<String, ClusterError> {
        let key = format!("{}/config", self.prefix);
        let response = self
            .client
            .kv_client()
            .get(key.as_str(), None)
            .await
            .map_err(|e| etcd_error(&format!("reading {key}"), e))?;
        let kv = response.kvs().first().ok_or_else(|| {
            ClusterError::Etcd(format!(
                "{key} is not set: put the network config there (net-conf.json's JSON, as for flanneld)"
            ))
        })?;
        kv.value_str()
            .map(str::to_owned)
            .map_err(|e| etcd_error(&format!("reading {key}"), e))
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// Every lease key and value under the prefix, and the revision they
    /// were read at.
    async fn list(&self) -> Result<(Vec<KeyValue>, i64), ClusterError> {
        let prefix = self.subnets_prefix();
        let response = self
            .client
            .kv_client()
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| etcd_error(&format!("listing {prefix}"), e))?;
        let revision = response.header().map_or(0, |h| h.revision());
        Ok((response.kvs().to_vec(), revision))
    }

    /// Puts `held` again: under a new etcd lease of `ttl`, or without one
    /// for a reservation. Returns when the new lease expires.
    ///
    /// With `own_only` (renewing), only while the key is still this
    /// node's: holding our value, or gone (then created again, if still
    /// free). A key another node wrote since (ours was deleted, and the
    /// subnet given out) is an error: two nodes must never hand out one
    /// subnet.
    async fn put(
        &self,
        held: &Held,
        ttl: Duration,
        own_only: bool,
    ) -> Result<Option<SystemTime>, ClusterError> {
        let (lease, expires) = match held.reserved {
            true => (None, None),
            false => {
                let (id, expires) = self.grant(ttl).await?;
                (Some(PutOptions::new().with_lease(id)), Some(expires))
            }
        };
        let key = held.key.as_str();
        let put = TxnOp::put(key, held.value.as_str(), lease);
        let conditions = match own_only {
            true => vec![
                vec![Compare::value(key, CompareOp::Equal, held.value.as_str())],
                vec![Compare::version(key, CompareOp::Equal, 0)],
            ],
            false => vec![Vec::new()],
        };
        for when in conditions {
            let txn = Txn::new().when(when).and_then([put.clone()]);
            let response = self
                .client
                .kv_client()
                .txn(txn)
                .await
                .map_err(|e| etcd_error(&format!("writing {key}"), e))?;
            if response.succeeded() {
                return Ok(expires);
            }
        }
        Err(ClusterError::Etcd(format!(
            "{key} now holds another node's lease (this node's was deleted and its subnet given out): restart the agent to lease another"
        )))
    }

    async fn grant(&self, ttl: Duration) -> Result<(i64, SystemTime), ClusterError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let granted = self
            .client
            .lease_client()
            .grant(seconds, None)
            .await
            .map_err(|e| etcd_error("granting an etcd lease", e))?;
        let expires = SystemTime::now() + Duration::from_secs(granted.ttl().max(0).unsigned_abs());
        Ok((granted.id(), expires))
    }

    /// Creates `key` with `value` under a new etcd lease of `ttl`, only if
    /// the key does not exist; `None` when it does.
    async fn create(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<SystemTime>, ClusterError> {
        let (id, expires) = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([Compare::version(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(id)),
            )]);
        let response = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| etcd_error(&format!("creating {key}"), e))?;
        if response.succeeded() {
            return Ok(Some(expires));
        }
        // Someone else's now: the etcd lease would only expire unused.
        let _ = self.client.lease_client().revoke(id).await;
        Ok(None)
    }

    /// Follows every lease: a listing, then changes from its revision,
    /// listed again when that revision was compacted away.
    async fn follow(
        self,
        sender: futures::channel::mpsc::UnboundedSender<Result<Event<SubnetLease>, ClusterError>>,
    ) {
        loop {
            let send = |item: Result<Event<SubnetLease>, ClusterError>| {
                self.problem
                    .set(item.as_ref().err().map(ToString::to_string));
                sender.unbounded_send(item).is_ok()
            };
            let (kvs, revision) = match self.list().await {
                Ok(listed) => listed,
                Err(e) => {
                    if !send(Err(e)) {
                        return;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            let listing = std::iter::once(Event::Init)
                .chain(kvs.iter().filter_map(lease_of_kv).map(Event::InitApply))
                .chain(std::iter::once(Event::InitDone));
            for event in listing {
                if !send(Ok(event)) {
                    return;
                }
            }
            match self.watch_from(revision + 1, &send).await {
                Ok(()) => return,
                Err(e) => {
                    if !send(Err(e)) {
                        return;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Sends each change from `revision` on; returns an error when the
    /// watch ends (compacted, cancelled or broken: list again), `Ok` when
    /// the receiver is gone.
    async fn watch_from(
        &self,
        revision: i64,
        send: &impl Fn(Result<Event<SubnetLease>, ClusterError>) -> bool,
    ) -> Result<(), ClusterError> {
        let prefix = self.subnets_prefix();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision)
            .with_prev_key();
        let mut stream = self
            .client
            .watch_client()
            .watch(prefix.as_str(), Some(options))
            .await
            .map_err(|e| etcd_error(&format!("watching {prefix}"), e))?;
        loop {
            let response = stream
                .message()
                .await
                .map_err(|e| etcd_error(&format!("watching {prefix}"), e))?
                .ok_or_else(|| ClusterError::Etcd(format!("the watch of {prefix} ended")))?;
            if response.compact_revision() != 0 {
                tracing::info!(
                    revision,
                    compacted = response.compact_revision(),
                    "etcd compacted the leases' watch revision; listing again"
                );
                return Err(ClusterError::Etcd(format!(
                    "the watch of {prefix} was compacted at revision {}",
                    response.compact_revision()
                )));
            }
            if response.canceled() {
                return Err(ClusterError::Etcd(format!(
                    "etcd cancelled the watch of {prefix}: {}",
                    response.cancel_reason()
                )));
            }
            for event in response.events() {
                let prev = event.prev_kv().and_then(lease_of_kv);
                let items = match (event.event_type(), event.kv().and_then(lease_of_kv)) {
                    // A key that changed hands (a node took over another's
                    // subnet, as from flanneld to weft): the former holder
                    // is gone.
                    (EventType::Put, Some(now)) => match prev {
                        Some(prev) if prev.node != now.node => {
                            vec![Event::Delete(prev), Event::Apply(now)]
                        }
                        _ => vec![Event::Apply(now)],
                    },
                    (EventType::Delete, _) => prev.map(Event::Delete).into_iter().collect(),
                    _ => Vec::new(),
                };
                for item in items {
                    if !send(Ok(item)) {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// How many times acquiring lists and creates again after another node
/// took the subnet chosen (flannel tries 10 times too).
const CREATE_ATTEMPTS: usize = 10;

impl Etcd {
    /// Deletes the leases weft wrote for this node under another public
    /// IP (its address changed): one node, one lease, or peers would see
    /// two leases of one node and drop the live one when the old expires.
    async fn forget_own_old_leases(
        &self,
        kvs: &[KeyValue],
        request: &LeaseRequest,
    ) -> Result<(), ClusterError> {
        for kv in kvs {
            let Some(old) = lease_of_kv(kv) else { continue };
            if old.node == request.node && old.public_ip != request.public_ip {
                let key = kv.key_str().map_err(|e| etcd_error("a lease key", e))?;
                tracing::info!(key, old_ip = %old.public_ip, "deleting this node's lease of its former address");
                self.client
                    .kv_client()
                    .delete(key, None)
                    .await
                    .map_err(|e| etcd_error(&format!("deleting {key}"), e))?;
            }
        }
        Ok(())
    }
}

/// The TLS options of `config`'s files.
fn tls(config: &EtcdConfig) -> Result<TlsOptions, ClusterError> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).map_err(|e| {
            ClusterError::Etcd(format!("reading the etcd {what} {}: {e}", path.display()))
        })
    };
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca, "CA file")?));
    }
    match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read(cert, "certificate")?,
                read(key, "key")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(ClusterError::Etcd(
                "--etcd-certfile and --etcd-keyfile go together".into(),
            ))
        }
    }
    Ok(tls)
}

/// A lease's key under `prefix`: flannel's `<a.b.c.d>-<len>`.
pub fn subnet_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!(
        "{}/subnets/{}-{}",
        prefix.trim_end_matches('/'),
        subnet.network(),
        subnet.prefix_len()
    )
}

/// The IPv4 subnet of a lease key (its last component; a dual-stack key's
/// `&<ipv6>-<len>` part is ignored); `None` for a key that is no lease.
pub fn parse_subnet_key(key: &str) -> Option<Ipv4Net> {
    let name = key.rsplit('/').next()?;
    let v4 = name.split('&').next()?;
    let (address, len) = v4.rsplit_once('-')?;
    let address: Ipv4Addr = address.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let net = Ipv4Net::new(address, len).ok()?;
    // flannel writes network addresses; anything else is not its key.
    (net.network() == address).then_some(net)
}

/// flannel's LeaseAttrs, with weft's node name beside them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(
        rename = "PublicIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Value::is_null"
    )]
    pub backend_data: Value,
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Value::is_null"
    )]
    pub backend_v6_data: Value,
    #[serde(
        rename = "weft.dev/node",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub node: Option<String>,
}

impl LeaseAttrs {
    /// What a weft node puts in its lease.
    pub fn of(node: &str, public_ip: Ipv4Addr, backend: &BackendData) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: backend.type_name().into(),
            backend_data: backend.json(),
            backend_v6_data: Value::Null,
            node: Some(node.into()),
        }
    }

    /// The node a lease stands for: weft's name, else flanneld's public IP.
    fn node(&self) -> String {
        self.node
            .clone()
            .unwrap_or_else(|| self.public_ip.to_string())
    }
}

/// A lease key and value as a lease; `None` for a key or value that is no
/// lease (logged: flannel skips such keys too). A key bound to no etcd
/// lease is a reservation, which never expires.
pub fn lease_of(key: &str, value: &str) -> Option<SubnetLease> {
    let subnet = parse_subnet_key(key)?;
    let attrs: LeaseAttrs = match serde_json::from_str(value) {
        Ok(attrs) => attrs,
        Err(e) => {
            tracing::warn!(key, error = %e, "ignoring an etcd subnet key whose value is not flannel's LeaseAttrs");
            return None;
        }
    };
    // The agent reads a peer's VTEP MAC under weft's own key.
    let backend = match attrs.backend_data.get("VtepMAC") {
        Some(mac) => json!({"vtepMAC": mac}),
        None => json!({}),
    };
    Some(SubnetLease {
        node: attrs.node(),
        subnet: IpNet::V4(subnet),
        public_ip: IpAddr::V4(attrs.public_ip),
        backend,
        // etcd removes an expired key itself.
        expires_at: None,
    })
}

/// Whether the lease `kv` is one of the subnets `request` allows.
fn fits(kv: &KeyValue, request: &LeaseRequest) -> bool {
    let subnet = kv.key_str().ok().and_then(parse_subnet_key);
    subnet.is_some_and(|s| request.allowed.fits(IpNet::V4(s)))
}

fn lease_of_kv(kv: &KeyValue) -> Option<SubnetLease> {
    lease_of(kv.key_str().ok()?, kv.value_str().ok()?)
}

impl SubnetManager for Etcd {
    async fn acquire(
        &self,
        request: &LeaseRequest,
        choose: impl Fn(&[IpNet]) -> Option<IpNet> + Send,
    ) -> Result<SubnetLease, ClusterError> {
        let IpAddr::V4(public_ip) = request.public_ip else {
            return Err(ClusterError::Etcd(format!(
                "the node's public IP {} is not IPv4 (flannel's etcd leases are keyed by one)",
                request.public_ip
            )));
        };
        let attrs = LeaseAttrs::of(&request.node, public_ip, &request.backend_data);
        let value = serde_json::to_string(&attrs).expect("LeaseAttrs serialize");
        for _ in 0..CREATE_ATTEMPTS {
            let (kvs, _) = self.list().await?;
            self.forget_own_old_leases(&kvs, request).await?;
            // Its own lease, as flanneld finds it: by its public IP; one
            // the network config no longer allows is deleted, as flanneld
            // does, and a new one taken.
            let own = kvs
                .iter()
                .find(|kv| lease_of_kv(kv).is_some_and(|l| l.public_ip == request.public_ip));
            if let Some(kv) = own.filter(|kv| !fits(kv, request)) {
                let key = kv.key_str().map_err(|e| etcd_error("a lease key", e))?;
                tracing::info!(
                    key,
                    "deleting this node's lease: the network config does not allow its subnet"
                );
                self.client
                    .kv_client()
                    .delete(key, None)
                    .await
                    .map_err(|e| etcd_error(&format!("deleting {key}"), e))?;
                continue;
            }
            if let Some(kv) = own {
                let held = Held {
                    key: kv
                        .key_str()
                        .map_err(|e| etcd_error("a lease key", e))?
                        .into(),
                    value: value.clone(),
                    reserved: kv.lease() == 0,
                };
                let expires_at = self.put(&held, request.ttl, false).await?;
                let subnet = parse_subnet_key(&held.key).expect("a listed lease key");
                *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(held);
                return Ok(lease(request, subnet, expires_at));
            }
            let taken: Vec<IpNet> = kvs
                .iter()
                .filter_map(|kv| parse_subnet_key(kv.key_str().ok()?))
                .map(IpNet::V4)
                .collect();
            let Some(IpNet::V4(subnet)) = choose(&taken) else {
                return Err(ClusterError::Etcd(
                    "no free subnet is left in the network".into(),
                ));
            };
            let key = subnet_key(&self.prefix, subnet);
            if let Some(expires) = self.create(&key, &value, request.ttl).await? {
                let held = Held {
                    key,
                    value,
                    reserved: false,
                };
                *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(held);
                return Ok(lease(request, subnet, Some(expires)));
            }
            // Another node created that key first: list again and choose
            // among what is left.
        }
        Err(ClusterError::Etcd(format!(
            "other nodes took the subnet chosen {CREATE_ATTEMPTS} times in a row; try again"
        )))
    }

    async fn renew(&self, node: &str, ttl: Duration) -> Result<SubnetLease, ClusterError> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                ClusterError::Etcd(format!("node {node} holds no lease here to renew"))
            })?;
        let expires_at = self.put(&held, ttl, true).await?;
        let mut lease = lease_of(&held.key, &held.value)
            .ok_or_else(|| ClusterError::Etcd(format!("{} is not a lease", held.key)))?;
        lease.expires_at = expires_at;
        Ok(lease)
    }

    fn watch_leases(&self) -> EventStream<SubnetLease> {
        let (sender, receiver) = futures::channel::mpsc::unbounded();
        tokio::spawn(self.clone().follow(sender));
        receiver.boxed()
    }

    /// Without a Kubernetes API there is no Node to publish on (as for
    /// flanneld with etcd).
    async fn publish_node(&self, _publication: &NodePublication) -> Result<(), ClusterError> {
        Ok(())
    }
}

/// etcd holds subnet leases only (as for flanneld with etcd): without a
/// Kubernetes API there are no Services, NetworkPolicies or Pods to
/// follow, so every kind is an empty list that never changes, and the
/// agent runs the overlay alone.
impl Cluster for Etcd {
    fn watch_without<K: Watched>(&self, _absent: &'static [&'static str]) -> EventStream<K> {
        futures::stream::iter([Ok(Event::Init), Ok(Event::InitDone)])
            .chain(futures::stream::pending())
            .boxed()
    }

    fn problem(&self) -> Option<String> {
        self.problem.get()
    }
}

/// Heartbeats tell LoadBalancer announcers which nodes are up; with no
/// Services there is nothing to announce, so none are kept.
impl Liveness for Etcd {
    async fn beat(&self, _node: &str, _valid_for: Duration) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn live_nodes(&self) -> Result<BTreeSet<String>, ClusterError> {
        Ok(BTreeSet::new())
    }
}

/// No Services, so no warnings about them.
impl Warnings for Etcd {
    async fn warn_service(
        &self,
        _namespace: &str,
        _name: &str,
        _warning: &Warning,
    ) -> Result<(), ClusterError> {
        Ok(())
    }
}

/// A cluster whose subnet leases are in etcd (flannel's layout) and whose
/// objects — Services, policies, Pods, heartbeats, Events — are
/// `objects`' (a kube-apiserver): flanneld's etcd mode beside kube-proxy,
/// in one agent. Nodes are left alone, as flanneld's etcd mode leaves
/// them (their podCIDR, if any, is node IPAM's).
#[derive(Clone)]
pub struct EtcdLeases<C> {
    pub objects: C,
    pub leases: Etcd,
}

impl<C: Cluster> Cluster for EtcdLeases<C> {
    fn watch_without<K: Watched>(&self, absent: &'static [&'static str]) -> EventStream<K> {
        self.objects.watch_without(absent)
    }

    fn problem(&self) -> Option<String> {
        self.leases.problem().or_else(|| self.objects.problem())
    }
}

impl<C: Send + Sync> SubnetManager for EtcdLeases<C> {
    async fn acquire(
        &self,
        request: &LeaseRequest,
        choose: impl Fn(&[IpNet]) -> Option<IpNet> + Send,
    ) -> Result<SubnetLease, ClusterError> {
        self.leases.acquire(request, choose).await
    }

    async fn renew(&self, node: &str, ttl: Duration) -> Result<SubnetLease, ClusterError> {
        self.leases.renew(node, ttl).await
    }

    fn watch_leases(&self) -> EventStream<SubnetLease> {
        self.leases.watch_leases()
    }

    async fn publish_node(&self, publication: &NodePublication) -> Result<(), ClusterError> {
        self.leases.publish_node(publication).await
    }
}

impl<C: Liveness + Sync> Liveness for EtcdLeases<C> {
    async fn beat(&self, node: &str, valid_for: Duration) -> Result<(), ClusterError> {
        self.objects.beat(node, valid_for).await
    }

    async fn live_nodes(&self) -> Result<BTreeSet<String>, ClusterError> {
        self.objects.live_nodes().await
    }
}

impl<C: Warnings + Sync> Warnings for EtcdLeases<C> {
    async fn warn_service(
        &self,
        namespace: &str,
        name: &str,
        warning: &Warning,
    ) -> Result<(), ClusterError> {
        self.objects.warn_service(namespace, name, warning).await
    }
}

/// The lease `request` got: `subnet` until `expires_at`.
fn lease(request: &LeaseRequest, subnet: Ipv4Net, expires_at: Option<SystemTime>) -> SubnetLease {
    SubnetLease {
        node: request.node.clone(),
        subnet: IpNet::V4(subnet),
        public_ip: request.public_ip,
        backend: request.backend.clone(),
        expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_flannels() {
        let subnet: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let key = subnet_key("/coreos.com/network/", subnet);
        assert_eq!(key, "/coreos.com/network/subnets/10.244.3.0-24");
        assert_eq!(parse_subnet_key(&key), Some(subnet));
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.244.3.0-24&fc00:0:0:3::-64"),
            Some(subnet),
            "a dual-stack key's IPv4 part"
        );
        for not_a_lease in [
            "/coreos.com/network/subnets/10.244.3.1-24",
            "/coreos.com/network/subnets/10.244.3.0-33",
            "/coreos.com/network/subnets/garbage",
            "/coreos.com/network/config",
        ] {
            assert_eq!(parse_subnet_key(not_a_lease), None, "{not_a_lease}");
        }
    }

    #[test]
    fn values_are_flannels_lease_attrs() {
        let vxlan = BackendData::Vxlan {
            vni: 1,
            vtep_mac: "0a:58:c6:12:00:0b".into(),
        };
        let attrs = LeaseAttrs::of("node-1", "198.18.0.11".parse().unwrap(), &vxlan);
        assert_eq!(
            serde_json::to_value(&attrs).unwrap(),
            json!({"PublicIP": "198.18.0.11", "BackendType": "vxlan",
                   "BackendData": {"VNI": 1, "VtepMAC": "0a:58:c6:12:00:0b"},
                   "weft.dev/node": "node-1"})
        );
        // As flanneld writes it (v0.28): no node name, named by its IP.
        let flannel = r#"{"PublicIP":"198.18.0.12","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ca:fe:00:00:00:01"}}"#;
        let lease = lease_of("/coreos.com/network/subnets/10.244.7.0-24", flannel).unwrap();
        assert_eq!(lease.node, "198.18.0.12");
        assert_eq!(lease.subnet.to_string(), "10.244.7.0/24");
        assert_eq!(lease.backend, json!({"vtepMAC": "ca:fe:00:00:00:01"}));
        let hostgw = LeaseAttrs::of(
            "node-2",
            "198.18.0.13".parse().unwrap(),
            &BackendData::HostGw,
        );
        assert_eq!(
            serde_json::to_string(&hostgw).unwrap(),
            r#"{"PublicIP":"198.18.0.13","BackendType":"host-gw","weft.dev/node":"node-2"}"#
        );
        assert!(lease_of("/coreos.com/network/subnets/10.244.8.0-24", "{}").is_none());
    }
}
