//! Address ranges as host-local defines them: a subnet, an optional
//! `rangeStart`/`rangeEnd` inside it and a gateway that is never handed out.
//! A [`RangeSet`] is a list of ranges of one family from which a pod gets
//! exactly one address; several sets (IPv4 and IPv6) make a dual-stack pod.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("subnet {0} has host bits set; use its network address {1}")]
    HostBits(IpNet, IpNet),
    #[error("subnet {0} is too small: it needs at least 4 addresses (IPv4 /30, IPv6 /126)")]
    TooSmall(IpNet),
    #[error("{field} {ip} is outside subnet {subnet}")]
    Outside {
        field: &'static str,
        ip: IpAddr,
        subnet: IpNet,
    },
    #[error("rangeStart {start} is after rangeEnd {end}")]
    Reversed { start: IpAddr, end: IpAddr },
    #[error("ranges {0} and {1} overlap")]
    Overlap(String, String),
    #[error("range set mixes IPv4 and IPv6 ({0} and {1}); put each family in its own range set")]
    MixedFamilies(String, String),
    #[error("a range set must contain at least one range")]
    Empty,
    #[error("subnet {subnet} {why}; pods need addresses from a unicast network such as 10.244.0.0/16 or fd00:10:244::/56")]
    Reserved { subnet: IpNet, why: String },
}

/// Blocks no pod address may come from, with what they are for.
const RESERVED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    ("240.0.0.0/4", "reserved and broadcast (240.0.0.0/4)"),
    ("::/127", "the unspecified and loopback addresses (::, ::1)"),
    ("fe80::/10", "link-local (fe80::/10)"),
    ("ff00::/8", "multicast (ff00::/8)"),
];

/// Why `subnet` cannot be a pod network, if it cannot: it is a default
/// route, or it overlaps a reserved block.
pub fn reserved_use(subnet: &IpNet) -> Option<String> {
    if subnet.prefix_len() == 0 {
        return Some("is a default route: it covers every address".into());
    }
    RESERVED.iter().find_map(|(block, what)| {
        let block: IpNet = block.parse().expect("constant network");
        let overlaps = block.contains(&subnet.network()) || subnet.contains(&block.network());
        overlaps.then(|| format!("overlaps {what}"))
    })
}

/// One contiguous allocatable range inside a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub(crate) fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(v.into())
    } else {
        IpAddr::V4((v as u32).into())
    }
}

impl Range {
    /// Builds a range with host-local's defaults: it starts after the
    /// network address, ends before the IPv4 broadcast (IPv6: at the last
    /// address) and its gateway defaults to the first address.
    pub fn new(
        subnet: IpNet,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Self, RangeError> {
        if subnet.network() != subnet.addr() {
            return Err(RangeError::HostBits(subnet, subnet.trunc()));
        }
        if let Some(why) = reserved_use(&subnet) {
            return Err(RangeError::Reserved { subnet, why });
        }
        if subnet.max_prefix_len() - subnet.prefix_len() < 2 {
            return Err(RangeError::TooSmall(subnet));
        }
        let v6 = subnet.addr().is_ipv6();
        let first = to_u128(subnet.network()) + 1;
        let last = if v6 {
            to_u128(subnet.broadcast())
        } else {
            to_u128(subnet.broadcast()) - 1
        };
        let inside = |field, ip: IpAddr| {
            let v = to_u128(ip);
            if ip.is_ipv6() == v6 && v >= first && v <= last {
                Ok(ip)
            } else {
                Err(RangeError::Outside { field, ip, subnet })
            }
        };
        let start = inside("rangeStart", start.unwrap_or(from_u128(first, v6)))?;
        let end = inside("rangeEnd", end.unwrap_or(from_u128(last, v6)))?;
        if to_u128(start) > to_u128(end) {
            return Err(RangeError::Reversed { start, end });
        }
        let gateway = match gateway {
            Some(gw) => Some(inside("gateway", gw)?),
            None => Some(from_u128(first, v6)),
        };
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn is_ipv6(&self) -> bool {
        self.subnet.addr().is_ipv6()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.is_ipv6()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }

    /// How many addresses this range can hand out (the gateway excluded).
    pub fn capacity(&self) -> u128 {
        let n = to_u128(self.end) - to_u128(self.start) + 1;
        match self.gateway {
            Some(gw) if self.contains(gw) => n - 1,
            _ => n,
        }
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.is_ipv6() == other.is_ipv6()
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}-{})", self.subnet, self.start, self.end)
    }
}

/// Ranges of one family; a pod gets one address from the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(Vec<Range>);

impl RangeSet {
    pub fn new(ranges: Vec<Range>) -> Result<Self, RangeError> {
        let first = ranges.first().ok_or(RangeError::Empty)?;
        for (i, a) in ranges.iter().enumerate() {
            if a.is_ipv6() != first.is_ipv6() {
                return Err(RangeError::MixedFamilies(first.to_string(), a.to_string()));
            }
            if let Some(b) = ranges[i + 1..].iter().find(|b| a.overlaps(b)) {
                return Err(RangeError::Overlap(a.to_string(), b.to_string()));
            }
        }
        Ok(Self(ranges))
    }

    pub fn ranges(&self) -> &[Range] {
        &self.0
    }

    pub fn is_ipv6(&self) -> bool {
        self.0[0].is_ipv6()
    }

    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    pub fn capacity(&self) -> u128 {
        self.0.iter().map(Range::capacity).sum()
    }

    /// Checks that no two sets share an address.
    pub fn check_disjoint(sets: &[RangeSet]) -> Result<(), RangeError> {
        for (i, a) in sets.iter().enumerate() {
            for b in &sets[i + 1..] {
                for ra in a.ranges() {
                    if let Some(rb) = b.ranges().iter().find(|rb| ra.overlaps(rb)) {
                        return Err(RangeError::Overlap(ra.to_string(), rb.to_string()));
                    }
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(Range::to_string).collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_follow_host_local() {
        let r = Range::new(net("10.1.2.0/24"), None, None, None).unwrap();
        assert_eq!(r.start, ip("10.1.2.1"));
        assert_eq!(r.end, ip("10.1.2.254"));
        assert_eq!(r.gateway, Some(ip("10.1.2.1")));
        assert_eq!(r.capacity(), 253);
        let r6 = Range::new(net("fd00::/120"), None, None, None).unwrap();
        assert_eq!(r6.end, ip("fd00::ff"));
        assert_eq!(r6.capacity(), 254);
    }

    #[test]
    fn invalid_ranges_are_refused() {
        assert!(matches!(
            Range::new(net("10.1.2.5/24"), None, None, None),
            Err(RangeError::HostBits(..))
        ));
        assert!(matches!(
            Range::new(net("10.1.2.0/31"), None, None, None),
            Err(RangeError::TooSmall(..))
        ));
        assert!(matches!(
            Range::new(net("10.1.2.0/24"), Some(ip("10.1.3.1")), None, None),
            Err(RangeError::Outside {
                field: "rangeStart",
                ..
            })
        ));
        assert!(matches!(
            Range::new(net("10.1.2.0/24"), None, Some(ip("10.1.2.255")), None),
            Err(RangeError::Outside {
                field: "rangeEnd",
                ..
            })
        ));
        assert!(matches!(
            Range::new(
                net("10.1.2.0/24"),
                Some(ip("10.1.2.9")),
                Some(ip("10.1.2.3")),
                None
            ),
            Err(RangeError::Reversed { .. })
        ));
        assert!(matches!(
            Range::new(net("10.1.2.0/24"), None, None, Some(ip("fd00::1"))),
            Err(RangeError::Outside {
                field: "gateway",
                ..
            })
        ));
    }

    #[test]
    fn reserved_networks_are_refused_with_the_reason() {
        for (subnet, needle) in [
            ("0.0.0.0/0", "default route"),
            ("::/0", "default route"),
            ("0.0.0.0/8", "this network"),
            ("127.0.0.0/8", "loopback"),
            ("127.5.0.0/16", "loopback"),
            ("96.0.0.0/3", "loopback"),
            ("169.254.0.0/16", "link-local"),
            ("224.0.0.0/4", "multicast"),
            ("239.255.0.0/24", "multicast"),
            ("240.0.0.0/4", "reserved"),
            ("255.255.255.0/24", "reserved"),
            ("::/120", "loopback"),
            ("fe80::/64", "link-local"),
            ("ff02::/120", "multicast"),
        ] {
            match Range::new(net(subnet), None, None, None) {
                Err(e @ RangeError::Reserved { .. }) => {
                    assert!(e.to_string().contains(needle), "{subnet}: {e}")
                }
                other => panic!("{subnet}: {other:?}"),
            }
        }
        for ok in [
            "10.244.0.0/16",
            "1.0.0.0/24",
            "223.255.255.0/24",
            "fd00::/64",
            "2001:db8::/64",
            "::2:0/120",
        ] {
            assert!(Range::new(net(ok), None, None, None).is_ok(), "{ok}");
        }
    }

    #[test]
    fn sets_must_be_single_family_and_disjoint() {
        let a = Range::new(net("10.1.2.0/24"), None, None, None).unwrap();
        let b = Range::new(net("10.1.2.0/25"), None, None, None).unwrap();
        let c = Range::new(net("fd00::/120"), None, None, None).unwrap();
        assert!(matches!(
            RangeSet::new(vec![a.clone(), b.clone()]),
            Err(RangeError::Overlap(..))
        ));
        assert!(matches!(
            RangeSet::new(vec![a.clone(), c.clone()]),
            Err(RangeError::MixedFamilies(..))
        ));
        assert!(matches!(RangeSet::new(vec![]), Err(RangeError::Empty)));
        let s1 = RangeSet::new(vec![a]).unwrap();
        let s2 = RangeSet::new(vec![b]).unwrap();
        assert!(RangeSet::check_disjoint(&[s1.clone(), s2]).is_err());
        assert!(RangeSet::check_disjoint(&[s1, RangeSet::new(vec![c]).unwrap()]).is_ok());
    }
}
