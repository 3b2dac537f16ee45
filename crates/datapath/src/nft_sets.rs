//! Elements of named nftables sets, added, removed and listed over
//! NETLINK_NETFILTER directly. Per-pod elements change on CNI ADD and DEL,
//! where starting an `nft` process (~20 ms) would cost more than the rest of
//! the command; one netlink transaction costs tens of microseconds.
//!
//! The sets themselves, and the rules that consult them, are created by an
//! `nft -f` script ([`crate::nft::apply`]); this module only fills them.
//! Keys are raw bytes as the kernel stores them: [`key`] builds a
//! concatenated key (`ifname . ipv4_addr`, ...) the way nft lays one out,
//! each part padded to the 4-byte registers nftables compares in.

use std::net::IpAddr;
use std::time::Duration;

use crate::nft::{
    malformed, nfgenmsg, push_attr, push_nested, Attrs, Family, NfnlSocket, NftError, NFGENMSG_LEN,
    NFNL_SUBSYS_NFTABLES,
};

const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
const NFTA_DATA_VALUE: u16 = 1;

/// nftables' interface-name keys (`ifname`, `iifname`) are IFNAMSIZ bytes,
/// the name zero-padded.
const IFNAME_LEN: usize = libc::IFNAMSIZ;

/// Elements per message: a message's element list is one netlink attribute,
/// whose length must fit in 16 bits.
const ELEMENTS_PER_MESSAGE: usize = 256;

/// One part of a concatenated set key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPart<'a> {
    /// An interface name (nft type `ifname`).
    Ifname(&'a str),
    /// A MAC address (`ether_addr`).
    Mac([u8; 6]),
    /// An address (`ipv4_addr` or `ipv6_addr`, network byte order).
    Ip(IpAddr),
    /// A port (`inet_service`, network byte order).
    Port(u16),
}

/// The key bytes of the concatenation `parts`, or `None` for an interface
/// name longer than the kernel allows.
pub fn key(parts: &[KeyPart]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for part in parts {
        match part {
            KeyPart::Ifname(name) => {
                // The terminating NUL must fit as well.
                if name.len() >= IFNAME_LEN {
                    return None;
                }
                out.extend_from_slice(name.as_bytes());
                out.resize(out.len() + IFNAME_LEN - name.len(), 0);
            }
            KeyPart::Mac(mac) => out.extend_from_slice(mac),
            KeyPart::Ip(IpAddr::V4(v4)) => out.extend_from_slice(&v4.octets()),
            KeyPart::Ip(IpAddr::V6(v6)) => out.extend_from_slice(&v6.octets()),
            KeyPart::Port(port) => out.extend_from_slice(&port.to_be_bytes()),
        }
        out.resize(crate::nft::align4(out.len()), 0);
    }
    Some(out)
}

/// The interface name a key built by [`key`] starts with (the name part is
/// always first in weft's sets), `None` when the key is too short.
pub fn key_ifname(key: &[u8]) -> Option<String> {
    let name = key.get(..IFNAME_LEN)?;
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    Some(String::from_utf8_lossy(name).into_owned())
}

/// Keys to add to or remove from one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElements {
    pub set: String,
    pub keys: Vec<Vec<u8>>,
}

/// The sets of one table, through one NETLINK_NETFILTER socket opened in
/// the calling thread's namespace (it stays there whichever thread uses it).
pub struct Sets {
    sock: NfnlSocket,
    family: Family,
    table: String,
}

impl Sets {
    pub fn open(family: Family, table: &str) -> Result<Self, NftError> {
        Ok(Sets {
            sock: NfnlSocket::open().map_err(NftError::Query)?,
            family,
            table: table.to_string(),
        })
    }

    /// Adds every element of `changes`, to expire after `timeout`, in one
    /// transaction: all of them or, on error, none. Elements already there
    /// are given the new timeout and expiry, which is also how they are
    /// removed (a timeout of a millisecond): an element that expires leaves
    /// the set at once for lookups and dumps, and the kernel frees it in the
    /// background. A deletion would leave the kernel cleanup work that every
    /// later close of a netfilter socket on the machine waits for (an RCU
    /// grace period, 5–30 ms here) while holding the nftables commit lock,
    /// i.e. it would slow down the next CNI command, not this one. The sets
    /// need `flags timeout`. Kernels before 6.12 keep the old timeout of an
    /// element already there (see [`updates_timeouts`]): remove with
    /// [`Sets::delete`] on those.
    pub fn put(&mut self, changes: &[SetElements], timeout: Duration) -> Result<(), NftError> {
        let flags = libc::NLM_F_CREATE as u16;
        // Milliseconds, at least one: 0 would mean "the set's default".
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.write(changes, NFT_MSG_NEWSETELEM, flags, Some(ms))
    }

    /// Removes every element of `changes` in one transaction (see
    /// [`Sets::put`] for what that costs later). An element that is not
    /// there fails the whole transaction (ENOENT, see [`NftError::errno`]):
    /// list the set first.
    pub fn delete(&mut self, changes: &[SetElements]) -> Result<(), NftError> {
        self.write(changes, NFT_MSG_DELSETELEM, 0, None)
    }

    /// Adds `added` for good and removes `removed`, in one transaction:
    /// lookups see the sets before or after, never in between.
    pub fn change(
        &mut self,
        added: &[SetElements],
        removed: &[SetElements],
    ) -> Result<(), NftError> {
        let mut messages =
            self.messages(added, NFT_MSG_NEWSETELEM, libc::NLM_F_CREATE as u16, None);
        messages.extend(self.messages(removed, NFT_MSG_DELSETELEM, 0, None));
        self.send(messages)
    }

    fn write(
        &mut self,
        changes: &[SetElements],
        msg: u16,
        flags: u16,
        timeout_ms: Option<u64>,
    ) -> Result<(), NftError> {
        let messages = self.messages(changes, msg, flags, timeout_ms);
        self.send(messages)
    }

    fn messages(
        &self,
        changes: &[SetElements],
        msg: u16,
        flags: u16,
        timeout_ms: Option<u64>,
    ) -> Vec<(u16, u16, Vec<u8>)> {
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        changes
            .iter()
            .flat_map(|c| {
                c.keys
                    .chunks(ELEMENTS_PER_MESSAGE)
                    .map(move |keys| (c.set.as_str(), keys))
            })
            .map(|(set, keys)| {
                let payload = element_list(self.family, &self.table, set, keys, timeout_ms);
                (kind, flags, payload)
            })
            .collect()
    }

    /// Sends `messages` as one batch (one transaction).
    fn send(&mut self, messages: Vec<(u16, u16, Vec<u8>)>) -> Result<(), NftError> {
        if messages.is_empty() {
            return Ok(());
        }
        let failed = |source| NftError::Elements {
            table: self.table.clone(),
            source,
        };
        match self.sock.batch(&messages).map_err(failed)? {
            0 => Ok(()),
            errno => Err(failed(std::io::Error::from_raw_os_error(errno))),
        }
    }

    /// The keys of every element of set `set`, sorted. A set or table that
    /// does not exist has no elements.
    ///
    /// A dump comes in parts, and the kernel resumes a hash set's walk by
    /// skipping the elements it already sent; when the table is rehashed
    /// between parts (it grows in deferred work after a large insert) the
    /// walk repeats some elements and skips others without flagging the
    /// dump. A dump with repeats is therefore taken again until two dumps
    /// agree; one without (the common case) is the answer.
    pub fn keys(&mut self, set: &str) -> Result<Vec<Vec<u8>>, NftError> {
        let (mut last, repeated) = self.dump_keys(set)?;
        if !repeated {
            return Ok(last);
        }
        for _ in 0..DUMP_ATTEMPTS {
            let (next, _) = self.dump_keys(set)?;
            if next == last {
                return Ok(next);
            }
            last = next;
        }
        Err(NftError::Query(std::io::Error::other(format!(
            "the elements of set {set} kept changing over {DUMP_ATTEMPTS} dumps; \
             something else is rewriting it"
        ))))
    }

    /// One dump of set `set`, sorted and without repeats, and whether it had
    /// repeats; a dump the kernel flags as interrupted by a ruleset change
    /// is taken again.
    fn dump_keys(&mut self, set: &str) -> Result<(Vec<Vec<u8>>, bool), NftError> {
        let mut payload = nfgenmsg(self.family as u8);
        push_attr(
            &mut payload,
            NFTA_SET_ELEM_LIST_TABLE,
            &nul_terminated(&self.table),
        );
        push_attr(&mut payload, NFTA_SET_ELEM_LIST_SET, &nul_terminated(set));
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM;
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        for _ in 0..DUMP_ATTEMPTS {
            let mut keys = Vec::new();
            let mut bad = None;
            let answer = self
                .sock
                .request(kind, flags, &payload, |msg_kind, msg| {
                    if msg_kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM || bad.is_some()
                    {
                        return;
                    }
                    if let Err(e) = keys_of(msg, &mut keys) {
                        bad = Some(e);
                    }
                })
                .map_err(NftError::Query)?;
            if let Some(e) = bad {
                return Err(NftError::Query(e));
            }
            match answer.errno {
                0 if answer.interrupted => continue,
                0 => {
                    keys.sort_unstable();
                    let dumped = keys.len();
                    keys.dedup();
                    let repeated = keys.len() != dumped;
                    return Ok((keys, repeated));
                }
                e if e == libc::ENOENT => return Ok((Vec::new(), false)),
                e => return Err(NftError::Query(std::io::Error::from_raw_os_error(e))),
            }
        }
        Err(NftError::Query(std::io::Error::other(format!(
            "every dump of set {set} was interrupted by a change to the ruleset"
        ))))
    }
}

/// How often [`Sets::keys`] dumps a set before giving up on a stable answer.
const DUMP_ATTEMPTS: usize = 8;

/// Whether the running kernel applies a new timeout to an element that is
/// already in a set (Linux 6.12 and later; earlier ones accept the request
/// and keep the old timeout), i.e. whether [`Sets::put`] can remove one.
pub fn updates_timeouts() -> bool {
    // SAFETY: utsname is plain bytes, for which all zeroes are valid.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes only into the struct it is given.
    if unsafe { libc::uname(&mut name) } != 0 {
        return false;
    }
    // SAFETY: uname NUL-terminates the release field.
    let release = unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) };
    release_updates_timeouts(&release.to_string_lossy())
}

/// The version test of [`updates_timeouts`] on a release like
/// `6.18.44-fc-v657`; anything unreadable counts as too old.
fn release_updates_timeouts(release: &str) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (6, 12),
        _ => false,
    }
}

/// The payload of a NEW/DELSETELEM message carrying `keys`.
fn element_list(
    family: Family,
    table: &str,
    set: &str,
    keys: &[Vec<u8>],
    timeout_ms: Option<u64>,
) -> Vec<u8> {
    let mut payload = nfgenmsg(family as u8);
    push_attr(
        &mut payload,
        NFTA_SET_ELEM_LIST_TABLE,
        &nul_terminated(table),
    );
    push_attr(&mut payload, NFTA_SET_ELEM_LIST_SET, &nul_terminated(set));
    push_nested(&mut payload, NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
        for key in keys {
            push_nested(list, NFTA_LIST_ELEM, |elem| {
                push_nested(elem, NFTA_SET_ELEM_KEY, |k| {
                    push_attr(k, NFTA_DATA_VALUE, key)
                });
                // An update changes the timeout and restarts the expiry only
                // when both are given.
                if let Some(ms) = timeout_ms {
                    push_attr(elem, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
                    push_attr(elem, NFTA_SET_ELEM_EXPIRATION, &ms.to_be_bytes());
                }
            });
        }
    });
    payload
}

fn nul_terminated(s: &str) -> Vec<u8> {
    [s.as_bytes(), &[0]].concat()
}

/// Appends the keys of one NFT_MSG_NEWSETELEM message to `keys`.
fn keys_of(msg: &[u8], keys: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
    let attrs = msg
        .get(NFGENMSG_LEN..)
        .ok_or_else(|| malformed("short nfgenmsg"))?;
    for attr in Attrs::new(attrs) {
        let (kind, list) = attr?;
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for elem in Attrs::new(list) {
            let (_, elem) = elem?;
            keys.push(key_of(elem)?);
        }
    }
    Ok(())
}

fn key_of(elem: &[u8]) -> std::io::Result<Vec<u8>> {
    for attr in Attrs::new(elem) {
        let (kind, key) = attr?;
        if kind != NFTA_SET_ELEM_KEY {
            continue;
        }
        for data in Attrs::new(key) {
            let (kind, value) = data?;
            if kind == NFTA_DATA_VALUE {
                return Ok(value.to_vec());
            }
        }
    }
    Err(malformed("set element without a key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_laid_out_in_padded_registers() {
        let k = key(&[
            KeyPart::Ifname("wv1"),
            KeyPart::Mac([2, 0, 0, 0, 0, 9]),
            KeyPart::Ip("10.0.0.5".parse().unwrap()),
        ])
        .unwrap();
        // ifname 16 bytes, MAC 6 padded to 8, IPv4 4.
        assert_eq!(k.len(), 28);
        assert_eq!(&k[..4], b"wv1\0");
        assert_eq!(&k[16..24], &[2, 0, 0, 0, 0, 9, 0, 0]);
        assert_eq!(&k[24..], &[10, 0, 0, 5]);
        assert_eq!(key_ifname(&k).as_deref(), Some("wv1"));
        let v6 = key(&[
            KeyPart::Ifname("a"),
            KeyPart::Ip("fd00::1".parse().unwrap()),
        ])
        .unwrap();
        assert_eq!(v6.len(), 32);
        // A port is 2 bytes in network order, padded to 4.
        let pair = key(&[
            KeyPart::Ip("10.0.0.5".parse().unwrap()),
            KeyPart::Port(8080),
        ])
        .unwrap();
        assert_eq!(pair, [10, 0, 0, 5, 0x1f, 0x90, 0, 0]);
    }

    #[test]
    fn an_interface_name_too_long_for_the_kernel_has_no_key() {
        assert!(key(&[KeyPart::Ifname("sixteen-chars-xx")]).is_none());
        assert!(key(&[KeyPart::Ifname("fifteen-chars-x")]).is_some());
        assert_eq!(key_ifname(&[0; 4]), None);
    }

    #[test]
    fn timeout_updates_come_with_linux_6_12() {
        assert!(release_updates_timeouts("6.18.44-fc-v657"));
        assert!(release_updates_timeouts("6.12.0"));
        assert!(release_updates_timeouts("7.0.0-30-generic"));
        assert!(!release_updates_timeouts("6.11.9"));
        assert!(!release_updates_timeouts("6.1.0-28-amd64"));
        assert!(!release_updates_timeouts("5.14.0-427.el9.x86_64"));
        assert!(!release_updates_timeouts("garbage"));
        assert!(!release_updates_timeouts(""));
    }

    #[test]
    fn element_messages_round_trip_through_the_parser() {
        let keys = vec![vec![1u8; 20], vec![2u8; 32]];
        let msg = element_list(Family::Bridge, "t", "s", &keys, Some(1));
        let mut parsed = Vec::new();
        keys_of(&msg, &mut parsed).unwrap();
        assert_eq!(parsed, keys);
    }

    #[test]
    fn truncated_element_messages_are_errors_not_panics() {
        let msg = element_list(Family::Bridge, "t", "s", &[vec![7u8; 20]], None);
        for cut in 0..msg.len() {
            let mut parsed = Vec::new();
            // The element list is the last attribute: a cut inside it is
            // malformed, a cut before it carries no elements.
            if keys_of(&msg[..cut], &mut parsed).is_ok() {
                assert!(parsed.is_empty(), "prefix of {cut} bytes gave {parsed:?}");
            }
        }
    }
}
