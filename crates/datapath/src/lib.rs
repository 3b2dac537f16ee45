//! weft's kernel layer: everything that changes or reads kernel network state
//! lives here, behind small typed wrappers — network namespaces ([`netns`]),
//! rtnetlink ([`netlink`]), `/proc/sys` knobs ([`sysctl`]), nftables rule
//! sets ([`nft`]) and set elements ([`nft_sets`]), packets nftables logs
//! ([`nflog`]), conntrack entries
//! ([`conntrack`]) and ARP answers for addresses no interface owns
//! ([`arp`]).
//!
//! This crate decides nothing: callers compute the desired state with pure
//! code elsewhere and hand it here to be applied. It never shells out to
//! `ip`, `bridge`, `iptables`, `conntrack` or `sysctl`; the only external
//! program it runs is `nft`, the standard interface to nftables.

pub mod arp;
pub mod conntrack;
pub mod neighbours;
pub mod netlink;
pub mod netns;
pub mod nflog;
pub mod nft;
pub mod nft_model;
pub mod nft_script;
pub mod nft_sets;
#[cfg(feature = "scratch")]
pub mod scratch;
pub mod sysctl;

pub use netlink::{Netlink, NetlinkError};
pub use netns::{NetNs, NetNsError};
