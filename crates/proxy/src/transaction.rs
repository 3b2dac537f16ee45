//! Minimal nft transactions: what was applied for a Service (kept compact,
//! as hashes) versus what it needs now → the commands that change only the
//! difference, ordered so references always resolve (pure).
//!
//! Order inside one transaction: new sets and chains are created; elements
//! that go away are deleted; changed chains are flushed and refilled; new
//! elements are added; chains and sets no longer wanted are flushed, then
//! deleted. nft applies the whole text atomically, so no packet sees a
//! half-updated Service.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;

use crate::plan::{Element, ServiceRules};
use weft_datapath::nft_script::{Script, SetKind};

use crate::table::{self, Collection, Pick, HAIRPIN};

/// What is in the kernel for one Service, without keeping the rule text
/// (10,000 Services' rules would cost tens of megabytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub sets: BTreeMap<String, u64>,
    pub chains: BTreeMap<String, u64>,
    pub elements: AppliedElements,
    pub hairpin: BTreeSet<Ipv4Addr>,
    pub picks: Box<[Pick]>,
}

impl Applied {
    pub fn of(rules: &ServiceRules) -> Applied {
        Applied {
            sets: rules
                .sets
                .iter()
                .map(|(k, v)| (k.clone(), hash(v)))
                .collect(),
            chains: rules
                .chains
                .iter()
                .map(|(k, v)| (k.clone(), hash(v)))
                .collect(),
            elements: AppliedElements::of(&rules.elements),
            hairpin: rules.hairpin.clone(),
            picks: rules.picks.iter().copied().collect(),
        }
    }
}

/// One Service's map elements as applied: each one's map, key and the hash
/// of its value, packed into two allocations (the 120,000 elements of
/// 10,000 Services as separate small allocations cost ~200 bytes each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedElements {
    /// Each element's map and value hash, in the order of `keys`.
    maps: Box<[(Collection, u64)]>,
    /// The keys, each ended by a newline (nft key text has none).
    keys: Box<str>,
}

impl AppliedElements {
    fn of(elements: &BTreeSet<Element>) -> Self {
        let mut keys = String::with_capacity(elements.iter().map(|e| e.key.len() + 1).sum());
        for e in elements {
            debug_assert!(!e.key.contains('\n'), "nft element key with a newline");
            keys.push_str(&e.key);
            keys.push('\n');
        }
        AppliedElements {
            maps: elements.iter().map(|e| (e.map, hash(&e.value))).collect(),
            keys: keys.into_boxed_str(),
        }
    }

    /// (map, key, value hash) of each element.
    pub fn iter(&self) -> impl Iterator<Item = (Collection, &str, u64)> {
        self.maps
            .iter()
            .zip(self.keys.split_terminator('\n'))
            .map(|((map, value), key)| (*map, key, *value))
    }
}

pub(crate) fn hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// Element texts for one map, joined into statements of at most
/// [`ElementList::CHUNK`] elements as they come: a full sync's 100,000
/// elements as a few large strings rather than 100,000 small ones, which
/// would leave the heap fragmented around what the proxier keeps.
#[derive(Debug, Default)]
struct ElementList {
    chunks: Vec<String>,
    in_last: usize,
}

impl ElementList {
    /// Moderate statements keep nft's parser fast.
    const CHUNK: usize = 2000;

    fn push(&mut self, text: &str) {
        match self.chunks.last_mut() {
            Some(chunk) if self.in_last < Self::CHUNK => {
                chunk.push_str(", ");
                chunk.push_str(text);
                self.in_last += 1;
            }
            _ => {
                self.chunks.push(text.to_string());
                self.in_last = 1;
            }
        }
    }
}

/// Commands collected per phase; several Services' changes merge into one
/// transaction.
#[derive(Debug)]
pub struct Transaction {
    create: Script,
    delete_elements: BTreeMap<Collection, ElementList>,
    /// Shared maps emptied for a full refill, before any rule is written.
    flush_shared: Script,
    fill: Script,
    add_elements: BTreeMap<Collection, ElementList>,
    flush_dead: Script,
    delete_dead: Script,
    /// Counted for reports: chains written (created or refilled).
    pub chains_written: usize,
    pub elements_changed: usize,
}

impl Default for Transaction {
    fn default() -> Self {
        Transaction {
            create: table::script(),
            delete_elements: BTreeMap::new(),
            flush_shared: table::script(),
            fill: table::script(),
            add_elements: BTreeMap::new(),
            flush_dead: table::script(),
            delete_dead: table::script(),
            chains_written: 0,
            elements_changed: 0,
        }
    }
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.delete_elements.is_empty()
            && self.flush_shared.is_empty()
            && self.fill.is_empty()
            && self.add_elements.is_empty()
            && self.flush_dead.is_empty()
            && self.delete_dead.is_empty()
    }

    pub fn create_set(&mut self, name: &str, decl: &str) {
        self.create.add_set(SetKind::Set, name, decl);
    }

    /// Creates the chain if needed and (re)writes its rules.
    pub fn write_chain(&mut self, name: &str, rules: &[String]) {
        self.create.add_chain(name, None);
        self.fill.flush_chain(name);
        for rule in rules {
            self.fill.add_rule(name, rule);
        }
        self.chains_written += 1;
    }

    pub fn delete_chain(&mut self, name: &str) {
        self.flush_dead.flush_chain(name);
        self.delete_dead.delete_chain(name);
    }

    /// Deletes a set or a map (nft takes `delete set` for both).
    pub fn delete_set(&mut self, name: &str) {
        self.delete_dead.delete_set(SetKind::Set, name);
    }

    pub fn add_element(&mut self, map: Collection, text: &str) {
        self.add_elements.entry(map).or_default().push(text);
        self.elements_changed += 1;
    }

    pub fn delete_element(&mut self, map: Collection, key: &str) {
        self.delete_elements.entry(map).or_default().push(key);
        self.elements_changed += 1;
    }

    /// Empties a shared map or set (full sync; must be followed by adding
    /// all its elements in the same transaction).
    pub fn flush_collection(&mut self, kind: SetKind, name: Collection) {
        self.flush_shared.flush_set(kind, &name.to_string());
    }

    /// Creates (or repairs) a shared endpoint choice: its maps and chains.
    pub fn create_pick(&mut self, pick: Pick) {
        pick.write(&mut self.create, &mut self.fill);
        self.chains_written += 3;
    }

    /// Removes a shared endpoint choice nobody uses: its chains, then its
    /// maps (which those chains' rules reference).
    pub fn delete_pick(&mut self, pick: Pick) {
        for chain in pick.chains() {
            self.delete_chain(&chain);
        }
        for map in pick.maps() {
            self.delete_set(&map.to_string());
        }
    }

    /// The commands that turn `old` into `new` for one Service.
    pub fn service(&mut self, old: &Applied, new: &ServiceRules) {
        self.chains(old, new);
        self.elements(old, new);
        for name in old.chains.keys() {
            if !new.chains.contains_key(name) {
                self.delete_chain(name);
            }
        }
        for name in old.sets.keys() {
            if !new.sets.contains_key(name) {
                self.delete_set(name);
            }
        }
    }

    /// New sets, and chains that are new or changed.
    pub fn chains(&mut self, old: &Applied, new: &ServiceRules) {
        for (name, decl) in &new.sets {
            if !old.sets.contains_key(name) {
                self.create_set(name, decl);
            }
        }
        for (name, rules) in &new.chains {
            if old.chains.get(name) != Some(&hash(rules)) {
                self.write_chain(name, rules);
            }
        }
    }

    fn elements(&mut self, old: &Applied, new: &ServiceRules) {
        let wanted: BTreeMap<(Collection, &str), &Element> = new
            .elements
            .iter()
            .map(|e| ((e.map, e.key.as_str()), e))
            .collect();
        let applied: HashMap<(Collection, &str), u64> = old
            .elements
            .iter()
            .map(|(map, key, value)| ((map, key), value))
            .collect();
        for (map, key, value) in old.elements.iter() {
            match wanted.get(&(map, key)) {
                Some(e) if hash(&e.value) == value => {}
                _ => self.delete_element(map, key),
            }
        }
        for e in &new.elements {
            if applied.get(&(e.map, e.key.as_str())) != Some(&hash(&e.value)) {
                self.add_element(e.map, &e.add_text());
            }
        }
    }

    pub fn hairpin_add(&mut self, ip: Ipv4Addr) {
        self.add_element(HAIRPIN, &format!("{ip} . {ip}"));
    }

    pub fn hairpin_delete(&mut self, ip: Ipv4Addr) {
        self.delete_element(HAIRPIN, &format!("{ip} . {ip}"));
    }

    /// The nft script, phases in order.
    pub fn render(&self) -> String {
        let mut out = table::script();
        out.append(&self.create);
        for (map, list) in &self.delete_elements {
            for chunk in &list.chunks {
                out.delete_elements(&map.to_string(), chunk);
            }
        }
        out.append(&self.flush_shared);
        out.append(&self.fill);
        for (map, list) in &self.add_elements {
            for chunk in &list.chunks {
                out.add_elements(&map.to_string(), chunk);
            }
        }
        out.append(&self.flush_dead);
        out.append(&self.delete_dead);
        out.into_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{SERVICE_IPS, SERVICE_NODEPORTS};

    fn rules(chain_rules: &[&str], elements: &[(Collection, &str, &str)]) -> ServiceRules {
        ServiceRules {
            sets: BTreeMap::new(),
            chains: [(
                "svc-1-a".to_string(),
                chain_rules.iter().map(|r| r.to_string()).collect(),
            )]
            .into(),
            elements: elements
                .iter()
                .map(|(m, k, v)| Element {
                    map: *m,
                    key: k.to_string(),
                    value: Some(v.to_string()),
                    frontend: None,
                })
                .collect(),
            hairpin: BTreeSet::new(),
            udp: BTreeMap::new(),
            picks: BTreeSet::new(),
        }
    }

    #[test]
    fn new_service_creates_chain_before_its_map_element() {
        let new = rules(
            &["dnat to 1.2.3.4:80"],
            &[(SERVICE_IPS, "10.96.0.1 . tcp . 80", "goto svc-1-a")],
        );
        let mut tx = Transaction::default();
        tx.service(&Applied::default(), &new);
        assert_eq!(
            tx.render(),
            "add chain ip weft-proxy svc-1-a\n\
             flush chain ip weft-proxy svc-1-a\n\
             add rule ip weft-proxy svc-1-a dnat to 1.2.3.4:80\n\
             add element ip weft-proxy service-ips { 10.96.0.1 . tcp . 80 : goto svc-1-a }\n"
        );
    }

    #[test]
    fn applied_elements_give_back_each_map_key_and_value_hash() {
        let r = rules(
            &[],
            &[
                (SERVICE_IPS, "10.96.0.1 . tcp . 80", "goto pick-tcp-1"),
                (SERVICE_NODEPORTS, "tcp . 30080", "goto picknp-tcp-1"),
            ],
        );
        let got: Vec<_> = Applied::of(&r)
            .elements
            .iter()
            .map(|(map, key, value)| (map, key.to_string(), value))
            .collect();
        let want: Vec<_> = r
            .elements
            .iter()
            .map(|e| (e.map, e.key.clone(), hash(&e.value)))
            .collect();
        assert_eq!(got, want);
        assert_eq!(Applied::of(&rules(&[], &[])).elements.iter().count(), 0);
    }

    #[test]
    fn unchanged_service_is_a_no_op() {
        let r = rules(&["x"], &[(SERVICE_IPS, "k", "goto svc-1-a")]);
        let mut tx = Transaction::default();
        tx.service(&Applied::of(&r), &r);
        assert!(tx.is_empty());
    }

    #[test]
    fn endpoint_change_rewrites_only_the_chain() {
        let old = rules(&["a"], &[(SERVICE_IPS, "k", "goto svc-1-a")]);
        let new = rules(&["b"], &[(SERVICE_IPS, "k", "goto svc-1-a")]);
        let mut tx = Transaction::default();
        tx.service(&Applied::of(&old), &new);
        assert_eq!(
            tx.render(),
            "add chain ip weft-proxy svc-1-a\nflush chain ip weft-proxy svc-1-a\nadd rule ip weft-proxy svc-1-a b\n"
        );
    }

    #[test]
    fn changed_value_is_deleted_then_added_and_removed_service_goes_last() {
        let old = rules(
            &["a"],
            &[
                (SERVICE_IPS, "k", "goto svc-1-a"),
                (SERVICE_NODEPORTS, "tcp . 30080", "goto svc-1-a"),
            ],
        );
        let mut new = rules(&["a"], &[(SERVICE_IPS, "k", "goto reject-chain")]);
        new.chains.clear();
        let mut tx = Transaction::default();
        tx.service(&Applied::of(&old), &new);
        assert_eq!(
            tx.render(),
            "delete element ip weft-proxy service-ips { k }\n\
             delete element ip weft-proxy service-nodeports { tcp . 30080 }\n\
             add element ip weft-proxy service-ips { k : goto reject-chain }\n\
             flush chain ip weft-proxy svc-1-a\n\
             delete chain ip weft-proxy svc-1-a\n"
        );
    }

    #[test]
    fn sets_are_created_first_and_deleted_after_their_chains() {
        let mut old = rules(&["a"], &[]);
        old.sets.insert("aff-1".into(), "type ipv4_addr;".into());
        let mut new = rules(&["b"], &[]);
        new.sets.insert("aff-2".into(), "type ipv4_addr;".into());
        let mut tx = Transaction::default();
        tx.service(&Applied::of(&old), &new);
        let text = tx.render();
        assert!(text.starts_with("add set ip weft-proxy aff-2 { type ipv4_addr; }\n"));
        assert!(text.ends_with("delete set ip weft-proxy aff-1\n"));
    }
}
