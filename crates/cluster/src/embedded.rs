//! The seam on weft's embedded store (one SQLite file shared by the lab's
//! processes): objects are listed page by page and followed through the
//! store's watchers, which sleep until a writer signals their kind. A
//! compacted log is answered with a new list inside the stream; store
//! errors are passed on and retried after [`RETRY_PAUSE`].
//!
//! Heartbeats are stored under their own kind ([`HEARTBEAT_KIND`]): the
//! store reserves `Lease` for subnet leases.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::Lease as Heartbeat;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::jiff::Timestamp;
use weft_store::{EventKind, Lease, Object, Store, StoreError, Watcher, LEASE_KIND};

use crate::leases::{self, LeaseRequest, NodePublication, SubnetLease, SubnetManager};
use crate::liveness::{self, Liveness, HEARTBEAT_NAMESPACE};
use crate::warnings::{self, Warning, Warnings};
use crate::{Cluster, ClusterError, Event, EventStream, Watched, RETRY_PAUSE};

/// The store kind heartbeats are kept under.
pub const HEARTBEAT_KIND: &str = "NodeLease";

/// How many objects one page of a list holds: a Service proxy listing
/// 10,000 Services never holds more than this many decoded at once.
const PAGE: usize = 500;

/// Room kept for events between lists: a watch wakes with a few at a time.
const LIVE_QUEUE: usize = 16;

/// The cluster as one embedded store holds it, for one network's leases.
#[derive(Clone, Debug)]
pub struct Embedded {
    store: Store,
    network: String,
    /// How often a watch looks for changes where it cannot be woken.
    poll: Duration,
}

impl Embedded {
    pub fn new(store: Store, network: &str, poll: Duration) -> Self {
        Embedded {
            store,
            network: network.to_owned(),
            poll,
        }
    }

    /// Opens the store at `path` (creating it if missing).
    pub fn open(path: &Path, network: &str, poll: Duration) -> Result<Self, ClusterError> {
        Ok(Embedded::new(Store::open(path)?, network, poll))
    }
}

impl Cluster for Embedded {
    fn watch_without<K: Watched>(&self, absent: &'static [&'static str]) -> EventStream<K> {
        let kind = K::KIND;
        let all = follow(
            self.store.clone(),
            kind,
            self.poll,
            move |store, after| {
                let cursor = after
                    .as_ref()
                    .map(|(ns, name)| (ns.as_str(), name.as_str()));
                let mut items = Vec::new();
                let mut last = None;
                let (revision, count) =
                    store.list_page_each(kind, cursor, PAGE, |namespace, name, json| {
                        items.extend(decode_text::<K>(kind, namespace, name, json));
                        last = Some((namespace.to_owned(), name.to_owned()));
                    })?;
                Ok(Page {
                    items,
                    revision,
                    next: last.filter(|_| count == PAGE),
                })
            },
            decode::<K>,
        );
        if absent.is_empty() {
            return all;
        }
        all.filter_map(move |item| async move {
            let out = |object: &K| {
                let labels = object.metadata().labels.as_ref();
                absent
                    .iter()
                    .any(|label| labels.is_some_and(|l| l.contains_key(*label)))
            };
            item.map(|event| match event {
                Event::InitApply(object) if out(&object) => None,
                Event::Apply(object) if out(&object) => Some(Event::Delete(object)),
                other => Some(other),
            })
            .transpose()
        })
        .boxed()
    }

    fn problem(&self) -> Option<String> {
        self.store.check_file().err().map(|e| e.to_string())
    }
}

impl SubnetManager for Embedded {
    async fn acquire(
        &self,
        request: &LeaseRequest,
        choose: impl Fn(&[IpNet]) -> Option<IpNet> + Send,
    ) -> Result<SubnetLease, ClusterError> {
        let lease = self.store.acquire_lease(
            &self.network,
            &request.node,
            request.public_ip,
            &request.backend,
            request.ttl,
            choose,
        )?;
        Ok(subnet_lease(lease))
    }

    async fn renew(&self, node: &str, ttl: Duration) -> Result<SubnetLease, ClusterError> {
        let lease = self.store.renew_lease(&self.network, node, ttl)?;
        // Nobody else removes expired rows here (etcd's TTLs would); doing
        // it on the renewal cadence keeps it off every pass.
        self.store.expire_leases(&self.network)?;
        Ok(subnet_lease(lease))
    }

    fn watch_leases(&self) -> EventStream<SubnetLease> {
        let network = self.network.clone();
        let own = network.clone();
        follow(
            self.store.clone(),
            LEASE_KIND,
            self.poll,
            move |store, _| {
                let (leases, revision) = store.leases(&network)?;
                Ok(Page {
                    items: leases.into_iter().map(subnet_lease).collect(),
                    revision,
                    next: None,
                })
            },
            move |object| {
                let lease = Lease::from_object(object)
                    .inspect_err(|e| tracing::warn!(error = %e, "unreadable subnet lease skipped"))
                    .ok()?;
                (lease.network == own).then(|| subnet_lease(lease))
            },
        )
    }

    async fn publish_node(&self, publication: &NodePublication) -> Result<(), ClusterError> {
        self.store
            .update_typed::<Node>("", &publication.node, |node| {
                leases::apply(publication, node)
            })?;
        Ok(())
    }
}

impl Liveness for Embedded {
    async fn beat(&self, node: &str, valid_for: Duration) -> Result<(), ClusterError> {
        let beat = liveness::heartbeat(node, valid_for, liveness::now());
        let value = serde_json::to_value(&beat).map_err(|source| ClusterError::Encode {
            what: format!("the heartbeat of node {node}"),
            source,
        })?;
        self.store
            .put(HEARTBEAT_KIND, HEARTBEAT_NAMESPACE, node, &value)?;
        Ok(())
    }

    async fn live_nodes(&self) -> Result<BTreeSet<String>, ClusterError> {
        let (objects, _) = self.store.list(HEARTBEAT_KIND)?;
        let beats: Vec<Heartbeat> = objects.iter().filter_map(decode).collect();
        Ok(liveness::live(&beats, liveness::now()))
    }
}

impl Warnings for Embedded {
    async fn warn_service(
        &self,
        namespace: &str,
        name: &str,
        warning: &Warning,
    ) -> Result<(), ClusterError> {
        let Some(service) = self.store.get_typed::<Service>(namespace, name)? else {
            return Ok(());
        };
        let event = warnings::event(&service, warning, Timestamp::now());
        self.store.put_typed(&event)?;
        Ok(())
    }
}

fn subnet_lease(lease: Lease) -> SubnetLease {
    SubnetLease {
        node: lease.node,
        subnet: lease.subnet,
        public_ip: lease.public_ip,
        backend: lease.backend,
        expires_at: Some(lease.expires_at),
    }
}

/// A stored object as `K`; one that does not decode is logged and skipped
/// (one bad object never blocks the others).
fn decode<K: serde::de::DeserializeOwned>(object: &Object) -> Option<K> {
    K::deserialize(&object.value)
        .inspect_err(|e| skipped(&object.kind, &object.namespace, &object.name, e))
        .ok()
}

/// [`decode`] from the stored JSON text (a listed object is never parsed
/// twice).
fn decode_text<K: serde::de::DeserializeOwned>(
    kind: &str,
    namespace: &str,
    name: &str,
    json: &str,
) -> Option<K> {
    serde_json::from_str(json)
        .inspect_err(|e| skipped(kind, namespace, name, e))
        .ok()
}

fn skipped(kind: &str, namespace: &str, name: &str, error: &serde_json::Error) {
    tracing::warn!(%kind, %namespace, %name, %error, "unreadable object skipped");
}

/// One page of a list, the revision it was read at and where the next
/// page starts (`None`: this was the last).
struct Page<T> {
    items: Vec<T>,
    revision: u64,
    next: Option<(String, String)>,
}

/// Where a stream is.
enum Phase {
    /// About to list from the start.
    Relist,
    /// Listing; `revision` is the first page's, to watch from.
    Listing {
        after: Option<(String, String)>,
        revision: Option<u64>,
    },
    Following(Box<Watcher>),
}

struct Follow<T, L, D> {
    store: Store,
    kind: &'static str,
    poll: Duration,
    list: L,
    decode: D,
    phase: Phase,
    ready: VecDeque<Event<T>>,
    /// The last step failed: pause before the next.
    failed: bool,
}

/// The stream of one kind: lists with `list` (page by page), then follows
/// the store's changes of `kind`, turning each into an item with `decode`
/// (`None`: not for this stream).
fn follow<T, L, D>(
    store: Store,
    kind: &'static str,
    poll: Duration,
    list: L,
    decode: D,
) -> EventStream<T>
where
    T: Send + 'static,
    L: Fn(&Store, &Option<(String, String)>) -> Result<Page<T>, StoreError> + Send + 'static,
    D: Fn(&Object) -> Option<T> + Send + 'static,
{
    let state = Follow {
        store,
        kind,
        poll,
        list,
        decode,
        phase: Phase::Relist,
        ready: VecDeque::new(),
        failed: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await;
        Some((item, state))
    })
    .boxed()
}

impl<T, L, D> Follow<T, L, D>
where
    L: Fn(&Store, &Option<(String, String)>) -> Result<Page<T>, StoreError>,
    D: Fn(&Object) -> Option<T>,
{
    async fn next(&mut self) -> Result<Event<T>, ClusterError> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            if std::mem::take(&mut self.failed) {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            if let Err(e) = self.step().await {
                self.failed = true;
                return Err(e.into());
            }
        }
    }

    /// Moves one step on, queueing the events it found.
    async fn step(&mut self) -> Result<(), StoreError> {
        match &mut self.phase {
            Phase::Relist => {
                self.ready.push_back(Event::Init);
                self.phase = Phase::Listing {
                    after: None,
                    revision: None,
                };
            }
            Phase::Listing { after, revision } => {
                let page = (self.list)(&self.store, after)?;
                let since = revision.unwrap_or(page.revision);
                self.ready
                    .extend(page.items.into_iter().map(Event::InitApply));
                match page.next {
                    Some(next) => {
                        self.phase = Phase::Listing {
                            after: Some(next),
                            revision: Some(since),
                        }
                    }
                    None => {
                        self.ready.push_back(Event::InitDone);
                        // A list's pages are gone once taken; keep no room
                        // for them (hundreds of kilobytes per watch).
                        self.ready.shrink_to(LIVE_QUEUE);
                        let watcher = self.store.watch(self.kind, since, self.poll);
                        self.phase = Phase::Following(Box::new(watcher));
                    }
                }
            }
            Phase::Following(watcher) => match watcher.next().await {
                Ok(events) => {
                    for event in events {
                        let Some(item) = (self.decode)(&event.object) else {
                            continue;
                        };
                        self.ready.push_back(match event.kind {
                            EventKind::Deleted => Event::Delete(item),
                            EventKind::Added | EventKind::Modified => Event::Apply(item),
                        });
                    }
                }
                // The log was compacted past us: list again, like a watch
                // after 410 Gone.
                Err(StoreError::Compacted { .. }) => self.phase = Phase::Relist,
                Err(e) => return Err(e),
            },
        }
        Ok(())
    }
}
