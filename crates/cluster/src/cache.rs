//! What consumers keep from a watch stream. [`Cache`] holds whole objects
//! (few, small ones: Nodes, leases) the way kube-rs's reflector does: a
//! re-list is buffered from `Init` to `InitDone` and then swapped in, so
//! readers never see a half-listed state. [`Relist`] is for consumers that
//! keep a reduced model instead (the Service proxy): it tells them, at
//! `InitDone`, which keys the new list no longer has.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;

use crate::Event;

/// `namespace/name` (`name` alone for cluster-scoped objects).
pub fn object_key<K: Metadata<Ty = ObjectMeta>>(object: &K) -> String {
    let meta = object.metadata();
    let name = meta.name.as_deref().unwrap_or_default();
    match meta.namespace.as_deref() {
        Some(namespace) if !namespace.is_empty() => format!("{namespace}/{name}"),
        _ => name.to_owned(),
    }
}

/// The objects of one watch, by key.
pub struct Cache<K> {
    current: BTreeMap<String, K>,
    /// The list being received (`Init` seen, `InitDone` not yet).
    listing: Option<BTreeMap<String, K>>,
    key: fn(&K) -> String,
    synced: bool,
}

impl<K: PartialEq> Cache<K> {
    pub fn new(key: fn(&K) -> String) -> Self {
        Cache {
            current: BTreeMap::new(),
            listing: None,
            key,
            synced: false,
        }
    }

    /// Takes in one event; returns whether what [`Cache::values`] shows
    /// changed.
    pub fn apply(&mut self, event: Event<K>) -> bool {
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                let key = (self.key)(&object);
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, object);
                false
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let changed = !self.synced || listed != self.current;
                self.current = listed;
                self.synced = true;
                changed
            }
            Event::Apply(object) => {
                let key = (self.key)(&object);
                if self.current.get(&key) == Some(&object) {
                    return false;
                }
                self.current.insert(key, object);
                true
            }
            Event::Delete(object) => self.current.remove(&(self.key)(&object)).is_some(),
        }
    }

    /// Whether a whole list has been received.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn values(&self) -> impl Iterator<Item = &K> {
        self.current.values()
    }

    pub fn get(&self, key: &str) -> Option<&K> {
        self.current.get(key)
    }
}

/// Tracks one re-list for a consumer with a reduced model.
pub struct Relist<Key> {
    seen: Option<HashSet<Key>>,
}

impl<Key> Default for Relist<Key> {
    fn default() -> Self {
        Relist { seen: None }
    }
}

impl<Key: Hash + Eq> Relist<Key> {
    /// `Init`: a new list begins.
    pub fn start(&mut self) {
        self.seen = Some(HashSet::new());
    }

    /// `InitApply`: `key` is in the new list.
    pub fn listed(&mut self, key: Key) {
        if let Some(seen) = &mut self.seen {
            seen.insert(key);
        }
    }

    /// `InitDone`: which of the keys the consumer holds (`held`) the new
    /// list did not have, i.e. were deleted while the consumer was not
    /// watching.
    pub fn finish<'a>(&mut self, held: impl IntoIterator<Item = &'a Key>) -> Vec<Key>
    where
        Key: Clone + 'a,
    {
        let Some(seen) = self.seen.take() else {
            return Vec::new();
        };
        held.into_iter()
            .filter(|key| !seen.contains(*key))
            .cloned()
            .collect()
    }

    /// Whether a list is being received.
    pub fn is_listing(&self) -> bool {
        self.seen.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;

    fn node(name: &str, cidr: &str) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        node.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: Some(cidr.into()),
            ..Default::default()
        });
        node
    }

    fn names(cache: &Cache<Node>) -> Vec<String> {
        cache.values().map(object_key).collect()
    }

    #[test]
    fn a_relist_is_swapped_in_whole_at_init_done() {
        let mut cache = Cache::new(object_key::<Node>);
        assert!(!cache.apply(Event::Init));
        cache.apply(Event::InitApply(node("a", "10.244.0.0/24")));
        cache.apply(Event::InitApply(node("b", "10.244.1.0/24")));
        assert!(names(&cache).is_empty() && !cache.is_synced());
        assert!(cache.apply(Event::InitDone));
        assert_eq!(names(&cache), ["a", "b"]);
        // A re-list in which b is gone: the old state is served until done.
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(node("a", "10.244.0.0/24")));
        assert_eq!(names(&cache), ["a", "b"]);
        assert!(cache.apply(Event::InitDone));
        assert_eq!(names(&cache), ["a"]);
        // The same list again changes nothing.
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(node("a", "10.244.0.0/24")));
        assert!(!cache.apply(Event::InitDone));
    }

    #[test]
    fn changes_report_whether_anything_changed() {
        let mut cache = Cache::new(object_key::<Node>);
        cache.apply(Event::Init);
        cache.apply(Event::InitDone);
        assert!(cache.apply(Event::Apply(node("a", "10.244.0.0/24"))));
        assert!(!cache.apply(Event::Apply(node("a", "10.244.0.0/24"))));
        assert!(cache.apply(Event::Apply(node("a", "10.244.9.0/24"))));
        assert!(cache.apply(Event::Delete(node("a", "10.244.9.0/24"))));
        assert!(!cache.apply(Event::Delete(node("a", "10.244.9.0/24"))));
    }

    #[test]
    fn a_relist_names_what_disappeared() {
        let held = ["a".to_string(), "b".to_string(), "c".to_string()];
        let mut relist = Relist::default();
        assert!(relist.finish(&held).is_empty(), "no list running");
        relist.start();
        relist.listed("b".to_string());
        assert!(relist.is_listing());
        assert_eq!(relist.finish(&held), ["a", "c"]);
        assert!(!relist.is_listing());
    }
}
