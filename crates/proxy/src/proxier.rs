//! The proxy's engine: keeps what it applied per Service and turns planned
//! Services into nft transactions — a full sync at start (and whenever an
//! incremental one fails or drift is found), then only the Services that
//! changed. It never lists the table's rules; the one thing it reads back
//! from the kernel is the list of chain names, on a full sync and on the
//! drift check.
//!
//! A Service whose rules nft rejects must not keep every other Service out
//! of the table: when a full sync is rejected, [`Proxier::sync_all`] finds
//! the Services at fault by checking their rules against the kernel
//! (`nft --check`, bisecting), logs each with nft's reason, leaves it out
//! and syncs the rest. It stays out until its plan changes
//! ([`Proxier::rejected`] lists them for the operator).
//!
//! After a transaction, UDP flows that still point at endpoints which went
//! away are deleted from conntrack so clients move on at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

use weft_datapath::conntrack::{self, FlowFilter};
use weft_datapath::nft;
use weft_datapath::nft_script::SetKind;

use crate::kernel::{Host, Kernel};

use crate::flows;
use crate::model::ServiceKey;
use crate::plan::{Element, NodeContext, ServiceRules};
use crate::table::{self, Collection, Pick, COLLECTIONS};
use crate::transaction::{self, Applied, Transaction};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("applying the Service rules failed: {0}")]
    Nft(#[from] nft::NftError),
    #[error("removing stale UDP flows failed: {0}")]
    Conntrack(#[from] conntrack::ConntrackError),
}

/// What one sync did (logged, and read by the benchmark).
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    pub full: bool,
    pub services: usize,
    pub chains_written: usize,
    pub elements_changed: usize,
    pub stale_chains: usize,
    pub stale_sets: usize,
    pub flows_deleted: usize,
    pub elapsed: Duration,
}

/// A Service as planned now; `None` when it is gone (or not programmed).
pub type Change = (ServiceKey, Option<ServiceRules>);

/// Who holds each shared map key (a frontend: address and port, NodePort).
type Owners = HashMap<(Collection, Box<str>), ServiceKey>;

/// A Service left out of the table because nft rejected its rules.
#[derive(Debug, Clone)]
struct Rejected {
    /// The plan nft rejected (a changed plan is tried again).
    plan: u64,
    reason: String,
}

pub struct Proxier<K = Host> {
    /// Where nft runs and flows are deleted.
    kernel: K,
    ctx: NodeContext,
    applied: HashMap<ServiceKey, Applied>,
    /// The UDP ports of Services that have any.
    udp: HashMap<ServiceKey, flows::UdpPorts>,
    /// Local endpoints that Services hairpin to.
    hairpin: Users<std::net::Ipv4Addr>,
    /// Who holds each shared map key, so a second Service claiming the same
    /// address and port is refused instead of failing every transaction.
    owners: Owners,
    /// Shared endpoint choices in the table; removed when no Service uses
    /// them any more, so the table looks the same as after a restart.
    picks: Users<Pick>,
    /// Services that lost a key to another and must be re-planned when it
    /// is released.
    refused: BTreeSet<ServiceKey>,
    released: bool,
    /// Services nft rejected, left out until their plan changes.
    rejected: HashMap<ServiceKey, Rejected>,
    /// Parallel `nft` processes for a full sync (userspace parsing is the
    /// bottleneck, and the kernel takes the batches one at a time anyway).
    shards: usize,
    synced: bool,
}

impl Proxier {
    /// A proxier for the kernel it runs on.
    pub fn new(ctx: NodeContext) -> Self {
        Proxier::with_kernel(ctx, Host)
    }
}

impl<K: Kernel> Proxier<K> {
    pub fn with_kernel(ctx: NodeContext, kernel: K) -> Self {
        let shards = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4);
        Proxier {
            kernel,
            ctx,
            applied: HashMap::new(),
            udp: HashMap::new(),
            hairpin: Users::default(),
            owners: HashMap::new(),
            picks: Users::default(),
            refused: BTreeSet::new(),
            released: false,
            rejected: HashMap::new(),
            shards,
            synced: false,
        }
    }

    /// The kernel this proxier writes to.
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Services refused a key earlier, once some key was released: the
    /// caller re-plans them (they may take it now).
    pub fn take_refused(&mut self) -> BTreeSet<ServiceKey> {
        if !std::mem::take(&mut self.released) {
            return BTreeSet::new();
        }
        std::mem::take(&mut self.refused)
    }

    /// Replaces what the proxier knows of its node; the next full sync
    /// writes the table for it.
    pub fn set_context(&mut self, ctx: NodeContext) {
        self.ctx = ctx;
    }

    /// The Services left out because nft rejected their rules, with nft's
    /// reason.
    pub fn rejected(&self) -> BTreeMap<ServiceKey, String> {
        self.rejected
            .iter()
            .map(|(k, r)| (k.clone(), r.reason.clone()))
            .collect()
    }

    /// Whether `rules` are what nft rejected for this Service before (then
    /// it stays out); a changed plan is forgotten and tried again.
    fn still_rejected(&mut self, key: &ServiceKey, rules: &ServiceRules) -> bool {
        let Some(rejected) = self.rejected.get(key) else {
            return false;
        };
        if rejected.plan == transaction::hash(rules) {
            return true;
        }
        tracing::info!(service = %key, "a Service nft rejected has changed; trying it again");
        self.rejected.remove(key);
        false
    }

    /// Drops frontends already owned by another Service (first one wins),
    /// with their endpoint-map elements.
    fn claim(&mut self, key: &ServiceKey, rules: &mut ServiceRules) {
        for (map, element, owner) in drop_taken(&self.owners, key, rules) {
            tracing::warn!(service = %key, owner = %owner, map = %map, element = %element, "address and port already taken by another Service; not programmed for this one");
            self.refused.insert(key.clone());
        }
    }

    fn record(&mut self, key: &ServiceKey, rules: Option<&ServiceRules>) {
        let mut dropped = Vec::new();
        if let Some(old) = self.applied.remove(key) {
            for (map, element, _) in old.elements.iter() {
                let k = (map, Box::from(element));
                if self.owners.get(&k) == Some(key) {
                    self.owners.remove(&k);
                    dropped.push(k);
                }
            }
        }
        if let Some(rules) = rules {
            own(&mut self.owners, key, rules);
            self.applied.insert(key.clone(), Applied::of(rules));
        }
        self.released |= dropped.iter().any(|k| !self.owners.contains_key(k));
    }

    /// Rewrites the whole table from `services` (every programmed Service),
    /// converging from any state without a moment where existing Services
    /// stop working: chains are refilled in place, the shared maps are
    /// flushed and refilled in one transaction (on a node without the table
    /// yet, filled by the parallel runs), leftover chains and sets deleted
    /// last.
    pub fn full_sync(
        &mut self,
        services: impl IntoIterator<Item = (ServiceKey, ServiceRules)>,
    ) -> Result<SyncReport, ProxyError> {
        let started = Instant::now();
        let existing = self.kernel.chain_names()?;
        let existing_sets = self.kernel.set_names()?;
        // No table yet (it always has its base chains): nothing can be
        // disturbed, so the map elements go with the parallel shards too.
        // Otherwise the shared maps are flushed and refilled in the one
        // last transaction, so no Service ever misses its entry.
        let fresh = existing.is_empty();
        self.kernel.apply(&table::base_script(&self.ctx))?;

        self.applied.clear();
        self.owners.clear();
        self.hairpin.clear();
        self.udp.clear();
        self.picks.clear();
        let mut report = SyncReport {
            full: true,
            ..SyncReport::default()
        };
        // Chains (and affinity sets) go to parallel shards, each its own
        // atomic transaction touching only its Services' chains; the shared
        // maps and sets to one last transaction (unless `fresh`). Each
        // Service's plan is dropped as soon as it is written out, so memory
        // stays flat.
        let mut shards: Vec<Transaction> =
            (0..self.shards).map(|_| Transaction::default()).collect();
        let mut last = Transaction::default();
        let empty = Applied::default();
        // Rejected Services that are gone drop out of the list.
        let mut still_rejected = HashSet::new();
        for (key, mut rules) in services {
            if self.still_rejected(&key, &rules) {
                still_rejected.insert(key);
                continue;
            }
            self.claim(&key, &mut rules);
            self.record(&key, Some(&rules));
            let shard = &mut shards[report.services % self.shards];
            shard.chains(&empty, &rules);
            let elements = if fresh { shard } else { &mut last };
            for e in &rules.elements {
                elements.add_element(e.map, &e.add_text());
            }
            rules.picks.iter().for_each(|p| self.picks.add(*p));
            rules.hairpin.iter().for_each(|ip| self.hairpin.add(*ip));
            if !rules.udp.is_empty() {
                self.udp.insert(key, rules.udp);
            }
            report.services += 1;
        }
        self.rejected.retain(|key, _| still_rejected.contains(key));
        let scripts: Vec<String> = shards
            .iter()
            .filter(|s| !s.is_empty())
            .map(Transaction::render)
            .collect();
        let mut picks = Transaction::default();
        let (wanted_picks, _) = self.picks.changes();
        for pick in &wanted_picks {
            picks.create_pick(*pick);
        }
        if !fresh {
            for (name, kind, _) in COLLECTIONS {
                last.flush_collection(*kind, *name);
            }
            for map in wanted_picks.iter().flat_map(Pick::maps) {
                last.flush_collection(SetKind::Map, map);
            }
        }
        report.chains_written =
            shards.iter().map(|s| s.chains_written).sum::<usize>() + picks.chains_written;
        report.elements_changed = shards.iter().map(|s| s.elements_changed).sum();
        drop(shards);
        if !picks.is_empty() {
            self.kernel.apply(&picks.render())?;
        }
        let kernel = &self.kernel;
        std::thread::scope(|scope| {
            let runs: Vec<_> = scripts
                .iter()
                .map(|script| scope.spawn(move || kernel.apply(script)))
                .collect();
            runs.into_iter()
                .map(|r| {
                    r.join().unwrap_or_else(|_| {
                        Err(nft::NftError::Spawn(std::io::Error::other(
                            "the thread running nft panicked",
                        )))
                    })
                })
                .collect::<Result<Vec<()>, _>>()
        })?;
        drop(scripts);

        let (hairpin, _) = self.hairpin.changes();
        for ip in hairpin {
            last.hairpin_add(ip);
        }
        let (wanted_chains, wanted_sets) = self.wanted();
        for name in existing.iter().filter(|n| !wanted_chains.contains(*n)) {
            last.delete_chain(name);
            report.stale_chains += 1;
        }
        for name in existing_sets.iter().filter(|n| !wanted_sets.contains(*n)) {
            last.delete_set(name);
            report.stale_sets += 1;
        }
        report.elements_changed += last.elements_changed;
        self.kernel.apply(&last.render())?;
        self.synced = true;
        let stale = flows::not_answered_by_endpoints(self.udp.values());
        if !stale.is_empty() {
            report.flows_deleted = self.kernel.delete_flows(&stale)?;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// A full sync (see [`Proxier::full_sync`]) that one Service cannot
    /// block: when nft rejects it, the Services at fault are found, logged
    /// and left out, and the sync runs again. `services` is called once per
    /// attempt, so the plans are never all held at once.
    pub fn sync_all<I>(&mut self, services: impl Fn() -> I) -> Result<SyncReport, ProxyError>
    where
        I: IntoIterator<Item = (ServiceKey, ServiceRules)>,
    {
        loop {
            match self.full_sync(services()) {
                Err(ProxyError::Nft(nft::NftError::Rejected { stderr })) => {
                    tracing::warn!(error = %nft_reason(&stderr), "nft rejected the full sync; looking for the Services at fault");
                    if self.isolate(services())? == 0 {
                        return Err(nft::NftError::Rejected { stderr }.into());
                    }
                }
                done => return done,
            }
        }
    }

    /// Finds the Services whose rules nft rejects (each the first whose
    /// addition makes the check fail, found by bisection over the list) and
    /// records them as rejected; returns how many.
    fn isolate(
        &mut self,
        services: impl IntoIterator<Item = (ServiceKey, ServiceRules)>,
    ) -> Result<usize, ProxyError> {
        let mut candidates: Vec<(ServiceKey, ServiceRules)> = services
            .into_iter()
            .filter(|(key, rules)| !self.still_rejected(key, rules))
            .collect();
        if let Err(reason) = check(&self.kernel, &[])? {
            tracing::error!(error = %reason, "nft rejects the proxy's table without any Service");
            return Ok(0);
        }
        let mut found = 0;
        while let Err(mut reason) = check(&self.kernel, &candidates)? {
            // check(first `passes`) succeeds, check(first `fails`) does not.
            let (mut passes, mut fails) = (0, candidates.len());
            while fails - passes > 1 {
                let mid = (passes + fails) / 2;
                match check(&self.kernel, &candidates[..mid])? {
                    Ok(()) => passes = mid,
                    Err(why) => (fails, reason) = (mid, why),
                }
            }
            let (key, rules) = candidates.remove(fails - 1);
            tracing::error!(service = %key, reason = %reason, "nft rejects this Service's rules: it is left out until it changes; every other Service is programmed");
            let plan = transaction::hash(&rules);
            self.rejected.insert(key, Rejected { plan, reason });
            found += 1;
        }
        Ok(found)
    }

    /// Applies the Services that changed, in one transaction. On failure
    /// (the kernel differs from what we applied) the caller runs a full
    /// sync.
    pub fn apply(&mut self, changes: Vec<Change>) -> Result<SyncReport, ProxyError> {
        let started = Instant::now();
        let mut tx = Transaction::default();
        let mut filters: Vec<FlowFilter> = Vec::new();
        let services = changes.len();
        for (key, rules) in changes {
            let rules = match rules {
                Some(r) if self.still_rejected(&key, &r) => None,
                Some(mut r) => {
                    self.claim(&key, &mut r);
                    Some(r)
                }
                None => {
                    self.rejected.remove(&key);
                    None
                }
            };
            let old = self.applied.get(&key).cloned().unwrap_or_default();
            let new = rules.clone().unwrap_or_default();
            tx.service(&old, &new);
            old.hairpin.iter().for_each(|ip| self.hairpin.remove(*ip));
            new.hairpin.iter().for_each(|ip| self.hairpin.add(*ip));
            old.picks.iter().for_each(|p| self.picks.remove(*p));
            new.picks.iter().for_each(|p| self.picks.add(*p));
            filters.extend(flows::stale(
                self.udp.get(&key).unwrap_or(&flows::UdpPorts::default()),
                &new.udp,
            ));
            if new.udp.is_empty() {
                self.udp.remove(&key);
            } else {
                self.udp.insert(key.clone(), new.udp.clone());
            }
            self.record(&key, rules.as_ref());
        }
        let (added, removed) = self.hairpin.changes();
        added.into_iter().for_each(|ip| tx.hairpin_add(ip));
        removed.into_iter().for_each(|ip| tx.hairpin_delete(ip));
        let (added, removed) = self.picks.changes();
        added.into_iter().for_each(|p| tx.create_pick(p));
        removed.into_iter().for_each(|p| tx.delete_pick(p));
        let mut report = SyncReport {
            services,
            chains_written: tx.chains_written,
            elements_changed: tx.elements_changed,
            ..SyncReport::default()
        };
        if !tx.is_empty() {
            if let Err(e) = self.kernel.apply(&tx.render()) {
                self.synced = false;
                return Err(e.into());
            }
        }
        if !filters.is_empty() {
            report.flows_deleted = self.kernel.delete_flows(&filters)?;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Whether the kernel's chains and sets still match what was applied
    /// (cheap: one netlink dump of names each). A mismatch means someone
    /// changed the table; the caller answers with a full sync.
    pub fn drifted(&self) -> Result<bool, ProxyError> {
        let chains: BTreeSet<String> = self.kernel.chain_names()?.into_iter().collect();
        let sets: BTreeSet<String> = self.kernel.set_names()?.into_iter().collect();
        Ok((chains, sets) != self.wanted())
    }

    /// The chains and the sets (maps included) the table has when it holds
    /// exactly what was applied.
    fn wanted(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut chains: BTreeSet<String> = table::base_chain_names(&self.ctx)
            .into_iter()
            .map(String::from)
            .collect();
        let mut sets: BTreeSet<String> = COLLECTIONS
            .iter()
            .map(|(name, _, _)| name.to_string())
            .collect();
        for applied in self.applied.values() {
            chains.extend(applied.chains.keys().cloned());
            sets.extend(applied.sets.keys().cloned());
        }
        for pick in self.picks.keys() {
            chains.extend(pick.chains());
            sets.extend(pick.maps().map(|m| m.to_string()));
        }
        (chains, sets)
    }
}

/// Whether an element is claimed by one Service: the frontends (address
/// and port, NodePort); endpoint-map elements follow theirs and ClusterIP
/// set entries are shared by all ports of a Service.
fn exclusive(e: &Element) -> bool {
    e.frontend.is_none() && e.map != table::CLUSTER_IPS
}

/// Drops from `rules` the frontends another Service holds in `owners`,
/// with their endpoint-map elements; returns each dropped frontend and its
/// owner.
fn drop_taken(
    owners: &Owners,
    key: &ServiceKey,
    rules: &mut ServiceRules,
) -> Vec<(Collection, String, ServiceKey)> {
    let taken: Vec<(Collection, String, ServiceKey)> = rules
        .elements
        .iter()
        .filter(|e| exclusive(e))
        .filter_map(|e| {
            let owner = owners.get(&(e.map, e.key.as_str().into()))?;
            (owner != key).then(|| (e.map, e.key.clone(), owner.clone()))
        })
        .collect();
    if !taken.is_empty() {
        let keys: BTreeSet<&str> = taken.iter().map(|(_, k, _)| k.as_str()).collect();
        rules
            .elements
            .retain(|e| !keys.contains(e.frontend.as_deref().unwrap_or(&e.key)));
    }
    taken
}

/// Records `key` as the holder of its frontends.
fn own(owners: &mut Owners, key: &ServiceKey, rules: &ServiceRules) {
    for e in rules.elements.iter().filter(|e| exclusive(e)) {
        owners.insert((e.map, e.key.as_str().into()), key.clone());
    }
}

/// Whether nft takes `services` as a full sync would write them over the
/// table in place (`nft --check`: nothing changes); `Err` carries nft's
/// reason.
fn check(
    kernel: &impl Kernel,
    services: &[(ServiceKey, ServiceRules)],
) -> Result<Result<(), String>, ProxyError> {
    let mut tx = Transaction::default();
    for (name, kind, _) in COLLECTIONS {
        tx.flush_collection(*kind, *name);
    }
    let picks: BTreeSet<Pick> = services
        .iter()
        .flat_map(|(_, rules)| rules.picks.iter().copied())
        .collect();
    for pick in picks {
        tx.create_pick(pick);
        for map in pick.maps() {
            tx.flush_collection(SetKind::Map, map);
        }
    }
    let mut owners = Owners::new();
    let empty = Applied::default();
    for (key, rules) in services {
        let mut rules = rules.clone();
        drop_taken(&owners, key, &mut rules);
        own(&mut owners, key, &rules);
        tx.chains(&empty, &rules);
        for e in &rules.elements {
            tx.add_element(e.map, &e.add_text());
        }
    }
    match kernel.check(&tx.render()) {
        Ok(()) => Ok(Ok(())),
        Err(nft::NftError::Rejected { stderr }) => Ok(Err(nft_reason(&stderr))),
        Err(e) => Err(e.into()),
    }
}

/// nft's complaint in one line: its first error and the line it points at.
fn nft_reason(stderr: &str) -> String {
    const SHOWN: usize = 200;
    let mut lines = stderr.lines();
    let Some(first) = lines.find(|l| l.contains("Error:")) else {
        return stderr.chars().take(SHOWN).collect();
    };
    let error = first.split_once("Error: ").map_or(first, |(_, e)| e);
    let at: String = lines
        .next()
        .unwrap_or_default()
        .chars()
        .take(SHOWN)
        .collect();
    format!("{error} in: {}", at.trim())
}

/// How many Services use each shared thing (a hairpin address, a pick),
/// and which of them appeared or vanished since the last
/// [`changes`](Users::changes).
#[derive(Debug)]
struct Users<K> {
    counts: HashMap<K, usize>,
    /// The count of each key touched since the last `changes`, before it
    /// was first touched.
    before: HashMap<K, usize>,
}

impl<K> Default for Users<K> {
    fn default() -> Self {
        Users {
            counts: HashMap::new(),
            before: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash + Ord> Users<K> {
    fn add(&mut self, key: K) {
        let count = self.counts.entry(key).or_default();
        self.before.entry(key).or_insert(*count);
        *count += 1;
    }

    fn remove(&mut self, key: K) {
        let Some(count) = self.counts.get_mut(&key) else {
            return;
        };
        self.before.entry(key).or_insert(*count);
        *count -= 1;
        if *count == 0 {
            self.counts.remove(&key);
        }
    }

    /// Keys that gained their first user and keys that lost their last one
    /// since the previous call, each sorted.
    fn changes(&mut self) -> (Vec<K>, Vec<K>) {
        let (mut appeared, mut vanished) = (Vec::new(), Vec::new());
        for (key, before) in self.before.drain() {
            match (before, self.counts.contains_key(&key)) {
                (0, true) => appeared.push(key),
                (b, false) if b > 0 => vanished.push(key),
                _ => {}
            }
        }
        appeared.sort();
        vanished.sort();
        (appeared, vanished)
    }

    fn keys(&self) -> impl Iterator<Item = &K> {
        self.counts.keys()
    }

    fn clear(&mut self) {
        self.counts.clear();
        self.before.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn users_report_first_and_last_users_only() {
        let mut users = Users::default();
        users.add('a');
        users.add('a');
        users.add('b');
        assert_eq!(users.changes(), (vec!['a', 'b'], vec![]));
        users.remove('a');
        users.add('c');
        users.remove('c');
        users.remove('z');
        assert_eq!(
            users.changes(),
            (vec![], vec![]),
            "'a' keeps a user; 'c' came and went"
        );
        users.remove('a');
        users.remove('b');
        users.add('b');
        assert_eq!(users.changes(), (vec![], vec!['a']));
        assert_eq!(users.keys().copied().collect::<Vec<_>>(), vec!['b']);
    }

    #[test]
    fn nft_reason_is_the_error_and_the_line_it_points_at() {
        let stderr = "/dev/stdin:3:27-30: Error: syntax error, unexpected string\nadd rule ip weft-proxy svc-x this is not a rule\n                          ^^^^";
        assert_eq!(
            nft_reason(stderr),
            "syntax error, unexpected string in: add rule ip weft-proxy svc-x this is not a rule"
        );
        assert_eq!(nft_reason("no such file"), "no such file");
    }
}
