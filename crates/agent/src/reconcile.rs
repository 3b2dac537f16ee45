//! Desired vs actual → the minimal set of changes, and the thin code that
//! applies them. The diff is pure and unit-tested; [`Reconciler::sync`]
//! lists what the kernel holds (only weft's own routes — tagged with
//! weft's route protocol — and the entries on weft's device), diffs and
//! applies. Run it on every change and periodically: it converges from any
//! state and repairs drift (deleted routes, neighbours, FDB entries).

use std::collections::HashSet;
use std::hash::Hash;

use weft_datapath::neighbours::{FdbEntry, Neighbour};
use weft_datapath::netlink::{Route, WEFT_ROUTE_PROTOCOL};
use weft_datapath::{Netlink, NetlinkError};

use crate::backend::Desired;

/// What to add and remove to get from `actual` to `desired`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub add_routes: Vec<Route>,
    pub del_routes: Vec<Route>,
    pub add_neighbours: Vec<Neighbour>,
    pub del_neighbours: Vec<Neighbour>,
    pub add_fdb: Vec<FdbEntry>,
    pub del_fdb: Vec<FdbEntry>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self == &Changes::default()
    }

    pub fn count(&self) -> usize {
        self.add_routes.len()
            + self.del_routes.len()
            + self.add_neighbours.len()
            + self.del_neighbours.len()
            + self.add_fdb.len()
            + self.del_fdb.len()
    }
}

/// The key a route is compared by: what the kernel would treat as "the
/// same route" plus the fields weft sets.
fn route_key(
    r: &Route,
) -> (
    Option<ipnet::IpNet>,
    Option<std::net::IpAddr>,
    Option<u32>,
    bool,
) {
    (r.dst, r.gateway, r.oif, r.onlink)
}

fn split<T: Clone, K: Eq + Hash>(
    desired: &[T],
    actual: &[T],
    key: impl Fn(&T) -> K,
) -> (Vec<T>, Vec<T>) {
    let want: HashSet<K> = desired.iter().map(&key).collect();
    let have: HashSet<K> = actual.iter().map(&key).collect();
    let add = desired
        .iter()
        .filter(|d| !have.contains(&key(d)))
        .cloned()
        .collect();
    let del = actual
        .iter()
        .filter(|a| !want.contains(&key(a)))
        .cloned()
        .collect();
    (add, del)
}

/// Pure: the changes that turn `actual` into `desired`.
pub fn diff(desired: &Desired, actual: &Desired) -> Changes {
    let (add_routes, del_routes) = split(&desired.routes, &actual.routes, route_key);
    let (add_neighbours, del_neighbours) =
        split(&desired.neighbours, &actual.neighbours, Clone::clone);
    let (add_fdb, del_fdb) = split(&desired.fdb, &actual.fdb, Clone::clone);
    Changes {
        add_routes,
        del_routes,
        add_neighbours,
        del_neighbours,
        add_fdb,
        del_fdb,
    }
}

/// Reads the kernel's side and applies [`diff`].
pub struct Reconciler<'a> {
    pub netlink: &'a Netlink,
    /// weft's overlay device, whose neighbours and FDB entries weft owns.
    pub device: Option<u32>,
}

impl Reconciler<'_> {
    pub async fn actual(&self) -> Result<Desired, NetlinkError> {
        let mut routes = self.netlink.routes(false).await?;
        routes.extend(self.netlink.routes(true).await?);
        routes.retain(|r| r.protocol == Some(WEFT_ROUTE_PROTOCOL));
        let (neighbours, fdb) = match self.device {
            Some(dev) => (
                self.netlink.permanent_neighbours(dev).await?,
                self.netlink.fdb_entries(dev).await?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        Ok(Desired {
            routes,
            neighbours,
            fdb,
        })
    }

    /// Converges; returns what it changed.
    pub async fn sync(&self, desired: &Desired) -> Result<Changes, NetlinkError> {
        let changes = diff(desired, &self.actual().await?);
        if !changes.is_empty() {
            tracing::debug!(?changes, "applying");
        }
        // Removals first so a route can move to another gateway or device.
        for r in &changes.del_routes {
            self.netlink.delete_route(r).await?;
        }
        for n in &changes.del_neighbours {
            self.netlink.delete_neighbour(n).await?;
        }
        for f in &changes.del_fdb {
            self.netlink.delete_fdb(f).await?;
        }
        // Neighbour and FDB before the route that depends on them.
        for n in &changes.add_neighbours {
            self.netlink.replace_neighbour(n).await?;
        }
        for f in &changes.add_fdb {
            self.netlink.replace_fdb(f).await?;
        }
        for r in &changes.add_routes {
            self.netlink.replace_route(r).await?;
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, gw: &str, oif: u32) -> Route {
        Route {
            dst: Some(dst.parse().unwrap()),
            gateway: Some(gw.parse().unwrap()),
            oif: Some(oif),
            protocol: Some(WEFT_ROUTE_PROTOCOL),
            ..Default::default()
        }
    }

    #[test]
    fn converged_state_needs_no_change() {
        let d = Desired {
            routes: vec![route("10.244.2.0/24", "198.18.0.12", 3)],
            ..Default::default()
        };
        let mut actual = d.clone();
        // The kernel reports extra fields (table, scope); they do not matter.
        actual.routes[0].table = Some(254);
        actual.routes[0].scope = Some(0);
        assert!(diff(&d, &actual).is_empty());
    }

    #[test]
    fn missing_is_added_stale_is_removed_moved_is_both() {
        let desired = Desired {
            routes: vec![
                route("10.244.2.0/24", "198.18.0.12", 3),
                route("10.244.3.0/24", "198.18.0.13", 3),
            ],
            neighbours: vec![Neighbour {
                index: 9,
                ip: "10.244.3.0".parse().unwrap(),
                mac: vec![2; 6],
            }],
            fdb: vec![],
        };
        let actual = Desired {
            routes: vec![
                route("10.244.2.0/24", "198.18.0.99", 3),
                route("10.244.9.0/24", "198.18.0.19", 3),
            ],
            neighbours: vec![],
            fdb: vec![FdbEntry {
                index: 9,
                mac: vec![4; 6],
                dst: "198.18.0.19".parse().unwrap(),
            }],
        };
        let c = diff(&desired, &actual);
        assert_eq!(c.add_routes.len(), 2, "the moved route and the missing one");
        assert_eq!(
            c.del_routes.len(),
            2,
            "the moved route's old form and the stale one"
        );
        assert_eq!(c.add_neighbours.len(), 1);
        assert_eq!(c.del_fdb.len(), 1);
        assert_eq!(c.count(), 6);
    }
}
