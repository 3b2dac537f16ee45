//! Desired vs actual → the minimal set of changes, and the thin code that
//! applies them. The diff is pure and unit-tested; [`Reconciler::sync`]
//! lists what the kernel holds (only weft's own routes — tagged with
//! weft's route protocol — and the entries on weft's device), diffs and
//! applies: run periodically, it converges from any state and repairs drift
//! (deleted routes, neighbours, FDB entries). [`Reconciler::apply_delta`]
//! diffs against what the last pass applied instead, reading nothing: the
//! cheap pass for a change of leases, whose cost no longer grows with the
//! size of the kernel's tables.
//!
//! The kernel sits behind [`RouteTables`] (netlink in production, an
//! in-memory table in tests).

use std::collections::HashSet;
use std::hash::Hash;

use weft_datapath::neighbours::{FdbEntry, Neighbour};
use weft_datapath::netlink::{Route, WEFT_ROUTE_PROTOCOL};
use weft_datapath::{Netlink, NetlinkError};

/// The kernel operations the reconciler uses.
// The agent runs them on one thread, so the futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait RouteTables {
    /// weft's own routes (tagged with [`WEFT_ROUTE_PROTOCOL`]), both
    /// families.
    async fn weft_routes(&self) -> Result<Vec<Route>, NetlinkError>;
    async fn permanent_neighbours(&self, device: u32) -> Result<Vec<Neighbour>, NetlinkError>;
    async fn fdb_entries(&self, device: u32) -> Result<Vec<FdbEntry>, NetlinkError>;
    async fn replace_route(&self, route: &Route) -> Result<(), NetlinkError>;
    async fn delete_route(&self, route: &Route) -> Result<(), NetlinkError>;
    async fn replace_neighbour(&self, neighbour: &Neighbour) -> Result<(), NetlinkError>;
    async fn delete_neighbour(&self, neighbour: &Neighbour) -> Result<(), NetlinkError>;
    async fn replace_fdb(&self, entry: &FdbEntry) -> Result<(), NetlinkError>;
    async fn delete_fdb(&self, entry: &FdbEntry) -> Result<(), NetlinkError>;
}

impl RouteTables for Netlink {
    async fn weft_routes(&self) -> Result<Vec<Route>, NetlinkError> {
        let mut routes = self.routes(false).await?;
        routes.extend(self.routes(true).await?);
        routes.retain(|r| r.protocol == Some(WEFT_ROUTE_PROTOCOL));
        Ok(routes)
    }
    async fn permanent_neighbours(&self, device: u32) -> Result<Vec<Neighbour>, NetlinkError> {
        Netlink::permanent_neighbours(self, device).await
    }
    async fn fdb_entries(&self, device: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        Netlink::fdb_entries(self, device).await
    }
    async fn replace_route(&self, route: &Route) -> Result<(), NetlinkError> {
        Netlink::replace_route(self, route).await
    }
    async fn delete_route(&self, route: &Route) -> Result<(), NetlinkError> {
        Netlink::delete_route(self, route).await
    }
    async fn replace_neighbour(&self, neighbour: &Neighbour) -> Result<(), NetlinkError> {
        Netlink::replace_neighbour(self, neighbour).await
    }
    async fn delete_neighbour(&self, neighbour: &Neighbour) -> Result<(), NetlinkError> {
        Netlink::delete_neighbour(self, neighbour).await
    }
    async fn replace_fdb(&self, entry: &FdbEntry) -> Result<(), NetlinkError> {
        Netlink::replace_fdb(self, entry).await
    }
    async fn delete_fdb(&self, entry: &FdbEntry) -> Result<(), NetlinkError> {
        Netlink::delete_fdb(self, entry).await
    }
}

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
pub struct Reconciler<'a, K = Netlink> {
    pub netlink: &'a K,
    /// weft's overlay device, whose neighbours and FDB entries weft owns.
    pub device: Option<u32>,
}

impl<K: RouteTables> Reconciler<'_, K> {
    pub async fn actual(&self) -> Result<Desired, NetlinkError> {
        let routes = self.netlink.weft_routes().await?;
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

    /// Converges from whatever the kernel holds; returns what it changed.
    pub async fn sync(&self, desired: &Desired) -> Result<Changes, NetlinkError> {
        let changes = diff(desired, &self.actual().await?);
        self.apply(&changes).await?;
        Ok(changes)
    }

    /// Converges from `applied`, what the last successful pass left,
    /// without reading the kernel; returns what it changed. Drift since
    /// then is [`Reconciler::sync`]'s to repair.
    pub async fn apply_delta(
        &self,
        desired: &Desired,
        applied: &Desired,
    ) -> Result<Changes, NetlinkError> {
        let changes = diff(desired, applied);
        self.apply(&changes).await?;
        Ok(changes)
    }

    async fn apply(&self, changes: &Changes) -> Result<(), NetlinkError> {
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{LocalNode, Peer};
    use std::cell::{Cell, RefCell};

    /// The kernel's tables in memory, as [`RouteTables`] reads and writes
    /// them (a replaced route takes the place of the one with the same
    /// destination, as the kernel's replace does), with every read and
    /// write counted and a switch that makes writes fail.
    #[derive(Default)]
    struct FakeTables {
        state: RefCell<Desired>,
        reads: Cell<usize>,
        writes: Cell<usize>,
        failing: Cell<bool>,
    }

    impl FakeTables {
        fn read(&self) {
            self.reads.set(self.reads.get() + 1);
        }

        fn write(&self, op: &str) -> Result<(), NetlinkError> {
            if self.failing.get() {
                return Err(NetlinkError::Request {
                    op: op.into(),
                    message: "injected failure".into(),
                    errno: Some(libc::EIO),
                });
            }
            self.writes.set(self.writes.get() + 1);
            Ok(())
        }

        fn remove<T>(
            list: &mut Vec<T>,
            found: impl Fn(&T) -> bool,
            op: &str,
        ) -> Result<(), NetlinkError> {
            let before = list.len();
            list.retain(|x| !found(x));
            if list.len() == before {
                return Err(NetlinkError::Request {
                    op: op.into(),
                    message: "no such entry".into(),
                    errno: Some(libc::ESRCH),
                });
            }
            Ok(())
        }
    }

    impl RouteTables for FakeTables {
        async fn weft_routes(&self) -> Result<Vec<Route>, NetlinkError> {
            self.read();
            let routes = &self.state.borrow().routes;
            Ok(routes
                .iter()
                .filter(|r| r.protocol == Some(WEFT_ROUTE_PROTOCOL))
                .cloned()
                .collect())
        }
        async fn permanent_neighbours(&self, device: u32) -> Result<Vec<Neighbour>, NetlinkError> {
            self.read();
            let state = self.state.borrow();
            Ok(state
                .neighbours
                .iter()
                .filter(|n| n.index == device)
                .cloned()
                .collect())
        }
        async fn fdb_entries(&self, device: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
            self.read();
            let state = self.state.borrow();
            Ok(state
                .fdb
                .iter()
                .filter(|f| f.index == device)
                .cloned()
                .collect())
        }
        async fn replace_route(&self, route: &Route) -> Result<(), NetlinkError> {
            self.write("replace route")?;
            let routes = &mut self.state.borrow_mut().routes;
            routes.retain(|r| r.dst != route.dst);
            routes.push(route.clone());
            Ok(())
        }
        async fn delete_route(&self, route: &Route) -> Result<(), NetlinkError> {
            self.write("delete route")?;
            let routes = &mut self.state.borrow_mut().routes;
            Self::remove(routes, |r| route_key(r) == route_key(route), "delete route")
        }
        async fn replace_neighbour(&self, n: &Neighbour) -> Result<(), NetlinkError> {
            self.write("replace neighbour")?;
            let list = &mut self.state.borrow_mut().neighbours;
            list.retain(|x| (x.index, x.ip) != (n.index, n.ip));
            list.push(n.clone());
            Ok(())
        }
        async fn delete_neighbour(&self, n: &Neighbour) -> Result<(), NetlinkError> {
            self.write("delete neighbour")?;
            let list = &mut self.state.borrow_mut().neighbours;
            Self::remove(list, |x| x == n, "delete neighbour")
        }
        async fn replace_fdb(&self, e: &FdbEntry) -> Result<(), NetlinkError> {
            self.write("replace fdb")?;
            let list = &mut self.state.borrow_mut().fdb;
            list.retain(|x| (x.index, &x.mac) != (e.index, &e.mac));
            list.push(e.clone());
            Ok(())
        }
        async fn delete_fdb(&self, e: &FdbEntry) -> Result<(), NetlinkError> {
            self.write("delete fdb")?;
            let list = &mut self.state.borrow_mut().fdb;
            Self::remove(list, |x| x == e, "delete fdb")
        }
    }

    const DEVICE: u32 = 9;

    /// What a vxlan node with peers `n` (10.244.n.0/24 at 198.18.0.1n)
    /// needs, as the backend plans it: route, neighbour and FDB entry per
    /// peer.
    fn mesh(peers: &[u8]) -> Desired {
        let local = LocalNode {
            name: "node-1".into(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            public_ip: "198.18.0.11".parse().unwrap(),
            underlay_index: 2,
            underlay_networks: vec!["198.18.0.0/24".parse().unwrap()],
        };
        let peers: Vec<Peer> = peers
            .iter()
            .map(|&n| Peer {
                name: format!("node-{n}"),
                subnet: format!("10.244.{n}.0/24").parse().unwrap(),
                public_ip: format!("198.18.0.{}", 10 + n).parse().unwrap(),
                vtep_mac: Some(vec![2, 0, 0, 0, 0, n]),
            })
            .collect();
        crate::backend::vxlan::plan(&local, &peers, DEVICE, false).unwrap()
    }

    fn sorted(d: &Desired) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut routes: Vec<String> = d
            .routes
            .iter()
            .map(|r| format!("{:?}", route_key(r)))
            .collect();
        let mut neighbours: Vec<String> = d.neighbours.iter().map(|n| format!("{n:?}")).collect();
        let mut fdb: Vec<String> = d.fdb.iter().map(|f| format!("{f:?}")).collect();
        routes.sort();
        neighbours.sort();
        fdb.sort();
        (routes, neighbours, fdb)
    }

    fn reconciler(tables: &FakeTables) -> Reconciler<'_, FakeTables> {
        Reconciler {
            netlink: tables,
            device: Some(DEVICE),
        }
    }

    #[tokio::test]
    async fn a_sync_converges_from_empty_and_a_second_changes_nothing() {
        let tables = FakeTables::default();
        let want = mesh(&[2, 3]);
        let changes = reconciler(&tables).sync(&want).await.unwrap();
        assert_eq!(changes.count(), 6);
        assert_eq!(sorted(&tables.state.borrow()), sorted(&want));
        let again = reconciler(&tables).sync(&want).await.unwrap();
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(tables.writes.get(), 6);
    }

    #[tokio::test]
    async fn a_sync_removes_stale_entries_and_keeps_routes_that_are_not_wefts() {
        let tables = FakeTables::default();
        let foreign = Route {
            dst: Some("10.99.0.0/16".parse().unwrap()),
            protocol: Some(4), // RTPROT_STATIC: someone else's
            ..Default::default()
        };
        {
            let mut state = tables.state.borrow_mut();
            *state = mesh(&[2, 7]);
            state.routes.push(foreign.clone());
            // Node 3's route points at the wrong gateway.
            let mut wrong = mesh(&[3]).routes.remove(0);
            wrong.gateway = Some("10.244.99.0".parse().unwrap());
            state.routes.push(wrong);
        }
        let want = mesh(&[2, 3]);
        let changes = reconciler(&tables).sync(&want).await.unwrap();
        assert_eq!(
            changes.del_routes.len(),
            2,
            "node 7's and node 3's wrong one"
        );
        assert_eq!(changes.del_neighbours.len() + changes.del_fdb.len(), 2);
        let state = tables.state.borrow();
        assert!(
            state.routes.contains(&foreign),
            "a route weft does not own was touched"
        );
        let mut mine = state.clone();
        mine.routes.retain(|r| r != &foreign);
        assert_eq!(sorted(&mine), sorted(&want));
    }

    #[tokio::test]
    async fn a_delta_reads_nothing_and_writes_only_the_difference() {
        let tables = FakeTables::default();
        let before = mesh(&[2, 3]);
        reconciler(&tables).sync(&before).await.unwrap();
        let (reads, writes) = (tables.reads.get(), tables.writes.get());
        let after = mesh(&[2, 4]);
        let changes = reconciler(&tables)
            .apply_delta(&after, &before)
            .await
            .unwrap();
        assert_eq!(tables.reads.get(), reads, "the delta read the kernel");
        assert_eq!(
            tables.writes.get() - writes,
            6,
            "3 removed for node 3, 3 added for 4"
        );
        assert_eq!(changes.count(), 6);
        assert_eq!(sorted(&tables.state.borrow()), sorted(&after));
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_and_the_next_sync_repairs() {
        let tables = FakeTables::default();
        tables.failing.set(true);
        let want = mesh(&[2]);
        let err = reconciler(&tables).sync(&want).await.unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        tables.failing.set(false);
        reconciler(&tables).sync(&want).await.unwrap();
        assert_eq!(sorted(&tables.state.borrow()), sorted(&want));
    }

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
