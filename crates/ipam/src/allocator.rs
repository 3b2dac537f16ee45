//! Which address to hand out: pure functions over range sets, the last
//! address reserved in each set and a predicate telling which addresses are
//! taken. No I/O here; [`crate::store`] supplies the facts.

use std::net::IpAddr;

use crate::range::{from_u128, to_u128, Range, RangeSet};
use crate::AllocError;

/// One address handed to a pod, with the gateway of its range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub address: ipnet::IpNet,
    pub gateway: Option<IpAddr>,
}

fn allocation(range: &Range, ip: IpAddr) -> Allocation {
    Allocation {
        address: ipnet::IpNet::new(ip, range.subnet.prefix_len())
            .expect("prefix length comes from a valid subnet"),
        gateway: range.gateway,
    }
}

/// Chooses one address per range set.
///
/// - `requested`: addresses the runtime asked for (`IP=` / `ips`); each must
///   fall in a distinct set and be free.
/// - `last_reserved[i]`: where set `i` stopped last time; the search
///   continues right after it (round-robin), wrapping around once.
/// - `taken(ip)`: whether an address is already reserved.
pub fn allocate(
    sets: &[RangeSet],
    requested: &[IpAddr],
    last_reserved: &[Option<IpAddr>],
    mut taken: impl FnMut(IpAddr) -> bool,
) -> Result<Vec<Allocation>, AllocError> {
    let mut wanted: Vec<Option<IpAddr>> = vec![None; sets.len()];
    for &ip in requested {
        let set = sets
            .iter()
            .position(|s| s.range_of(ip).is_some())
            .ok_or_else(|| AllocError::RequestedOutOfRange {
                ip,
                ranges: sets
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            })?;
        if wanted[set].is_some() {
            let same: Vec<String> = requested
                .iter()
                .filter(|r| sets[set].range_of(**r).is_some())
                .map(|r| r.to_string())
                .collect();
            return Err(AllocError::TooManyRequested {
                count: same.len(),
                ips: same.join(", "),
            });
        }
        wanted[set] = Some(ip);
    }
    let mut out = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        let alloc = match wanted[i] {
            Some(ip) => {
                let range = set.range_of(ip).expect("checked above");
                if range.gateway == Some(ip) {
                    return Err(AllocError::RequestedGateway { ip });
                }
                if taken(ip) {
                    return Err(AllocError::RequestedTaken { ip });
                }
                allocation(range, ip)
            }
            None => next_free(set, last_reserved.get(i).copied().flatten(), &mut taken)
                .ok_or_else(|| AllocError::Exhausted(set.to_string()))?,
        };
        out.push(alloc);
    }
    Ok(out)
}

/// Walks the set starting right after `last`, wrapping around once: the rest
/// of `last`'s range, the ranges after it, the ranges before it, and finally
/// the beginning of `last`'s own range.
fn next_free(
    set: &RangeSet,
    last: Option<IpAddr>,
    taken: &mut impl FnMut(IpAddr) -> bool,
) -> Option<Allocation> {
    let ranges = set.ranges();
    let (home, resume) = last
        .and_then(|l| {
            ranges
                .iter()
                .position(|r| r.contains(l))
                .map(|i| (i, to_u128(l).saturating_add(1)))
        })
        .unwrap_or((0, to_u128(ranges[0].start)));
    let whole = |r: &Range| (to_u128(r.start), to_u128(r.end));
    let home_range = &ranges[home];
    let (home_lo, home_hi) = whole(home_range);
    let order = std::iter::once((home_range, resume, home_hi))
        .chain(
            ranges[home + 1..]
                .iter()
                .map(|r| (r, whole(r).0, whole(r).1)),
        )
        .chain(ranges[..home].iter().map(|r| (r, whole(r).0, whole(r).1)))
        .chain(std::iter::once((
            home_range,
            home_lo,
            resume.saturating_sub(1),
        )));
    for (range, from, to) in order {
        let free = (from..=to)
            .map(|v| from_u128(v, set.is_ipv6()))
            .find(|&ip| range.gateway != Some(ip) && !taken(ip));
        if let Some(ip) = free {
            return Some(allocation(range, ip));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn set(specs: &[(&str, Option<&str>, Option<&str>)]) -> RangeSet {
        RangeSet::new(
            specs
                .iter()
                .map(|(n, s, e)| {
                    Range::new(
                        n.parse().unwrap(),
                        s.map(|s| s.parse().unwrap()),
                        e.map(|e| e.parse().unwrap()),
                        None,
                    )
                    .unwrap()
                })
                .collect(),
        )
        .unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn round_robin_continues_after_last_reserved_and_skips_gateway() {
        let s = [set(&[("10.0.0.0/29", None, None)])];
        let a = allocate(&s, &[], &[None], |_| false).unwrap();
        assert_eq!(
            a[0].address.to_string(),
            "10.0.0.2/29",
            "first after the gateway"
        );
        let a = allocate(&s, &[], &[Some(ip("10.0.0.4"))], |_| false).unwrap();
        assert_eq!(a[0].address.addr(), ip("10.0.0.5"));
        // After the end it wraps to the start, skipping the gateway .1.
        let a = allocate(&s, &[], &[Some(ip("10.0.0.6"))], |_| false).unwrap();
        assert_eq!(a[0].address.addr(), ip("10.0.0.2"));
    }

    #[test]
    fn full_cycle_hands_out_every_address_once_then_exhausts() {
        let s = [set(&[
            ("10.0.0.0/28", Some("10.0.0.3"), Some("10.0.0.9")),
            ("10.0.1.0/29", None, None),
        ])];
        let mut used = HashSet::new();
        let mut last = None;
        for _ in 0..(7 + 5) {
            let a = allocate(&s, &[], &[last], |ip| used.contains(&ip)).unwrap();
            let got = a[0].address.addr();
            assert!(used.insert(got), "{got} handed out twice");
            last = Some(got);
        }
        let err = allocate(&s, &[], &[last], |ip| used.contains(&ip)).unwrap_err();
        assert!(matches!(err, AllocError::Exhausted(_)));
    }

    #[test]
    fn wraps_within_range_when_last_is_in_the_middle() {
        let s = [set(&[("10.0.0.0/29", None, None)])];
        let taken = [ip("10.0.0.5"), ip("10.0.0.6"), ip("10.0.0.2")];
        let a = allocate(&s, &[], &[Some(ip("10.0.0.4"))], |i| taken.contains(&i)).unwrap();
        assert_eq!(a[0].address.addr(), ip("10.0.0.3"));
    }

    #[test]
    fn dual_stack_gets_one_address_per_set() {
        let s = [
            set(&[("10.0.0.0/24", None, None)]),
            set(&[("fd00::/120", None, None)]),
        ];
        let a = allocate(&s, &[], &[None, None], |_| false).unwrap();
        assert_eq!(a.len(), 2);
        assert!(a[0].address.addr().is_ipv4() && a[1].address.addr().is_ipv6());
        assert_eq!(a[1].gateway, Some(ip("fd00::1")));
    }

    #[test]
    fn requested_addresses_are_checked() {
        let s = [set(&[("10.0.0.0/24", None, None)])];
        let a = allocate(&s, &[ip("10.0.0.77")], &[None], |_| false).unwrap();
        assert_eq!(a[0].address.addr(), ip("10.0.0.77"));
        assert_eq!(
            allocate(&s, &[ip("10.0.0.77")], &[None], |_| true).unwrap_err(),
            AllocError::RequestedTaken {
                ip: ip("10.0.0.77")
            }
        );
        assert!(matches!(
            allocate(&s, &[ip("10.9.0.1")], &[None], |_| false).unwrap_err(),
            AllocError::RequestedOutOfRange { .. }
        ));
        assert!(matches!(
            allocate(&s, &[ip("10.0.0.1")], &[None], |_| false).unwrap_err(),
            AllocError::RequestedGateway { .. }
        ));
        assert!(matches!(
            allocate(&s, &[ip("10.0.0.7"), ip("10.0.0.8")], &[None], |_| false).unwrap_err(),
            AllocError::TooManyRequested { count: 2, .. }
        ));
    }
}
