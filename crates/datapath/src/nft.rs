//! nftables: rule sets are generated as text by the callers and applied here
//! atomically with `nft -f -` (one transaction: all of it or none of it).
//!
//! Reads that sit on hot paths ask the kernel directly over
//! NETLINK_NETFILTER instead: [`chain_exists`] is a single round trip (tens
//! of microseconds, where running `nft list` costs milliseconds) and lets
//! hot paths skip re-applying rules already in place; [`chain_names`] and
//! [`set_names`] list a table's chains and sets in one dump each, so pruning
//! stale per-Service chains and sets does not have to parse `nft` output.
//! This module never changes the ruleset over netlink: every change of
//! tables, chains, rules and sets goes through `nft -f`, so there is one
//! writer format to review. Only set elements, which per-pod hot paths add
//! and remove, are written over netlink, by [`crate::nft_sets`].
//!
//! It also owns the crate's NETLINK_NETFILTER socket (requests, dumps and
//! batches) and attribute codec (crate-private), which [`crate::conntrack`]
//! and [`crate::nft_sets`] share.

use std::io::Write;
use std::process::{Command, Stdio};

use netlink_packet_core::{Emitable, NetlinkBuffer, NetlinkHeader};

use crate::netns::NetNs;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft ({0}); install the nftables package")]
    Spawn(std::io::Error),
    #[error("nft rejected the rule set: {stderr}")]
    Rejected { stderr: String },
    #[error("nftables netlink query failed: {0}")]
    Query(std::io::Error),
    #[error("cannot change elements of nftables table {table}: {source}")]
    Elements {
        table: String,
        source: std::io::Error,
    },
}

impl NftError {
    /// The kernel's errno behind a netlink failure, e.g. ENOENT for a set
    /// or element that does not exist.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Query(e) | NftError::Elements { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }
}

/// Applies `script` as one nftables transaction in the caller's namespace,
/// or inside `netns` when given.
pub fn apply(script: &str, netns: Option<&NetNs>) -> Result<(), NftError> {
    feed(&["-f", "-"], script, netns)
}

/// Checks `script` against the ruleset in place (`nft --check`: the kernel
/// sees the whole transaction and aborts it), changing nothing.
pub fn check(script: &str, netns: Option<&NetNs>) -> Result<(), NftError> {
    feed(&["--check", "-f", "-"], script, netns)
}

/// Runs `nft ARGS` with `script` on its standard input.
fn feed(args: &[&str], script: &str, netns: Option<&NetNs>) -> Result<(), NftError> {
    let mut cmd = match netns {
        Some(ns) => ns.command("nft"),
        None => Command::new("nft"),
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Rejected {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs `nft` with `args` and returns its standard output (for listing).
pub fn run(args: &[&str], netns: Option<&NetNs>) -> Result<String, NftError> {
    let mut cmd = match netns {
        Some(ns) => ns.command("nft"),
        None => Command::new("nft"),
    };
    let out = cmd.args(args).output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Rejected {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// nftables address families, as numbered by the kernel (NFPROTO_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet = 1,
    Ip = 2,
    Bridge = 7,
    Ip6 = 10,
}

impl Family {
    /// The family as nft scripts name it.
    pub fn word(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Bridge => "bridge",
        }
    }
}

/// nfnetlink subsystem of nftables (NFNL_SUBSYS_NFTABLES).
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;

/// How often [`chain_names`] and [`set_names`] restart a dump that a concurrent ruleset
/// change made inconsistent before giving up.
const DUMP_ATTEMPTS: usize = 5;

/// Whether table `table` of `family` exists, asked of the kernel of the
/// calling thread's namespace.
pub fn table_exists(family: Family, table: &str) -> Result<bool, NftError> {
    let mut payload = nfgenmsg(family as u8);
    push_str_attr(&mut payload, NFTA_TABLE_NAME, table);
    object_exists(NFT_MSG_GETTABLE, &payload)
}

/// Whether chain `chain` exists in table `table` of `family`, asked of the
/// kernel of the calling thread's namespace.
pub fn chain_exists(family: Family, table: &str, chain: &str) -> Result<bool, NftError> {
    let mut payload = nfgenmsg(family as u8);
    push_str_attr(&mut payload, NFTA_CHAIN_TABLE, table);
    push_str_attr(&mut payload, NFTA_CHAIN_NAME, chain);
    object_exists(NFT_MSG_GETCHAIN, &payload)
}

/// Whether the object a GET request of `get` names exists.
fn object_exists(get: u16, payload: &[u8]) -> Result<bool, NftError> {
    let msg_type = (NFNL_SUBSYS_NFTABLES << 8) | get;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    let mut sock = NfnlSocket::open().map_err(NftError::Query)?;
    // The object's description comes before the ACK; its presence is all
    // we need, so the content is ignored.
    let answer = sock
        .request(msg_type, flags, payload, |_, _| {})
        .map_err(NftError::Query)?;
    match answer.errno {
        0 => Ok(true),
        e if e == libc::ENOENT => Ok(false),
        e => Err(NftError::Query(std::io::Error::from_raw_os_error(e))),
    }
}

/// Names of all chains of table `table` in `family`, in the kernel's order,
/// asked of the kernel of the calling thread's namespace in one dump. A
/// table that does not exist has no chains (an empty list, not an error).
pub fn chain_names(family: Family, table: &str) -> Result<Vec<String>, NftError> {
    object_names(family, table, &CHAINS)
}

/// Names of the named sets and maps of table `table` in `family` (anonymous
/// sets, which belong to a rule, are left out); like [`chain_names`].
pub fn set_names(family: Family, table: &str) -> Result<Vec<String>, NftError> {
    let mut names = object_names(family, table, &SETS)?;
    names.retain(|n| !n.starts_with("__"));
    Ok(names)
}

/// One kind of nftables object as its netlink dump sees it.
struct ObjectKind {
    get: u16,
    new: u16,
    table_attr: u16,
    name_attr: u16,
    what: &'static str,
}

const CHAINS: ObjectKind = ObjectKind {
    get: NFT_MSG_GETCHAIN,
    new: NFT_MSG_NEWCHAIN,
    table_attr: NFTA_CHAIN_TABLE,
    name_attr: NFTA_CHAIN_NAME,
    what: "chain",
};

const SETS: ObjectKind = ObjectKind {
    get: NFT_MSG_GETSET,
    new: NFT_MSG_NEWSET,
    table_attr: NFTA_SET_TABLE,
    name_attr: NFTA_SET_NAME,
    what: "set",
};

fn object_names(family: Family, table: &str, kind: &ObjectKind) -> Result<Vec<String>, NftError> {
    let mut payload = nfgenmsg(family as u8);
    // The kernel's chain dump ignores this attribute (it walks every table
    // of the family; only rule, set, object and flowtable dumps filter by
    // table), so the answer is filtered here as well. Sent anyway so that a
    // kernel which learns to filter does less work.
    push_str_attr(&mut payload, kind.table_attr, table);
    let msg_type = (NFNL_SUBSYS_NFTABLES << 8) | kind.get;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    let mut sock = NfnlSocket::open().map_err(NftError::Query)?;
    for _ in 0..DUMP_ATTEMPTS {
        let mut names = Vec::new();
        let mut malformed = None;
        let answer = sock
            .request(msg_type, flags, &payload, |msg_kind, msg| {
                if msg_kind != (NFNL_SUBSYS_NFTABLES << 8) | kind.new || malformed.is_some() {
                    return;
                }
                match object_of(msg, kind) {
                    Ok((t, name)) if t == table.as_bytes() => names.push(name),
                    Ok(_) => {}
                    Err(e) => malformed = Some(e),
                }
            })
            .map_err(NftError::Query)?;
        if let Some(e) = malformed {
            return Err(NftError::Query(e));
        }
        match answer.errno {
            // The ruleset changed while the dump ran: the list may have
            // missed or repeated objects, so ask again.
            0 if answer.interrupted => continue,
            0 => return Ok(names),
            e if e == libc::ENOENT => return Ok(Vec::new()),
            e => return Err(NftError::Query(std::io::Error::from_raw_os_error(e))),
        }
    }
    Err(NftError::Query(std::io::Error::new(
        std::io::ErrorKind::Interrupted,
        format!(
            "the ruleset kept changing during {DUMP_ATTEMPTS} dumps of table {table}'s {}s",
            kind.what
        ),
    )))
}

/// The table and object name of one NFT_MSG_NEW* message of `kind`.
fn object_of<'a>(msg: &'a [u8], kind: &ObjectKind) -> std::io::Result<(&'a [u8], String)> {
    let attrs = msg
        .get(NFGENMSG_LEN..)
        .ok_or_else(|| malformed("short nfgenmsg"))?;
    let (mut table, mut name) = (None, None);
    for attr in Attrs::new(attrs) {
        let (attr_kind, value) = attr?;
        if attr_kind == kind.table_attr {
            table = Some(c_string(value));
        } else if attr_kind == kind.name_attr {
            name = Some(c_string(value));
        }
    }
    match (table, name) {
        (Some(t), Some(n)) => Ok((t, String::from_utf8_lossy(n).into_owned())),
        _ => Err(malformed(&format!(
            "{} without a table or a name",
            kind.what
        ))),
    }
}

/// A NUL-terminated netlink string without its terminator.
fn c_string(value: &[u8]) -> &[u8] {
    value.split(|&b| b == 0).next().unwrap_or_default()
}

fn push_str_attr(buf: &mut Vec<u8>, kind: u16, value: &str) {
    push_attr(buf, kind, &[value.as_bytes(), &[0]].concat());
}

/// The 4-byte nfnetlink header: family, version NFNETLINK_V0, resource id 0.
pub(crate) fn nfgenmsg(family: u8) -> Vec<u8> {
    vec![family, 0, 0, 0]
}

pub(crate) const NFGENMSG_LEN: usize = 4;
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends one netlink attribute (header, value, padding to 4 bytes).
pub(crate) fn push_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = NLA_HDRLEN + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

/// Appends a nested attribute whose content `fill` writes; its length is
/// patched in afterwards.
pub(crate) fn push_nested(buf: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(kind | libc::NLA_F_NESTED as u16).to_ne_bytes());
    fill(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf.resize(align4(buf.len()), 0);
}

pub(crate) fn malformed(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("malformed netlink message: {what}"),
    )
}

/// Iterates over the attributes of a buffer: `(type without the
/// NESTED/BYTEORDER flags, value)`. A length that runs past the buffer is an
/// error (and ends the iteration), never a panic.
pub(crate) struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = std::io::Result<(u16, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        // Fewer bytes than a header can only be trailing padding.
        if self.rest.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([self.rest[0], self.rest[1]]) as usize;
        let kind = u16::from_ne_bytes([self.rest[2], self.rest[3]]) & libc::NLA_TYPE_MASK as u16;
        if len < NLA_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(malformed("attribute length out of bounds")));
        }
        let value = &self.rest[NLA_HDRLEN..len];
        self.rest = self.rest.get(align4(len)..).unwrap_or_default();
        Some(Ok((kind, value)))
    }
}

/// How the kernel ended its answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The errno of the ACK, error or end-of-dump message (0: success).
    pub errno: i32,
    /// A dump message carried NLM_F_DUMP_INTR: the kernel's state changed
    /// while it was being dumped, so the dump may be inconsistent.
    pub interrupted: bool,
}

/// A NETLINK_NETFILTER socket in the namespace of the thread that opened
/// it. Serves the nftables queries of this module and
/// [`crate::conntrack`]; one socket can carry many requests in turn. The
/// socket is `netlink-sys`'s and the message headers `netlink-packet-core`'s
/// (as in rtnetlink); the nfnetlink payloads and batches, which no crate
/// covers, are built here.
pub(crate) struct NfnlSocket {
    socket: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// The receive buffer. The kernel sizes each dump datagram after the
/// largest buffer a socket has offered, up to 32 KiB; offering 64 KiB keeps
/// large dumps at the fewest system calls, and MSG_TRUNC still catches a
/// bigger datagram instead of parsing half of it.
const RECV_BUF: usize = 64 * 1024;

impl NfnlSocket {
    pub(crate) fn open() -> std::io::Result<Self> {
        Ok(Self {
            socket: netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Sends one request and hands every data message of the answer to
    /// `on_message` as `(nlmsg_type, payload after the netlink header)`,
    /// until the kernel's ACK or error (requests) or NLMSG_DONE (dumps).
    pub(crate) fn request(
        &mut self,
        msg_type: u16,
        flags: u16,
        payload: &[u8],
        mut on_message: impl FnMut(u16, &[u8]),
    ) -> std::io::Result<Answer> {
        let seq = self.next_seq();
        let mut req = Vec::with_capacity(NLMSG_HDRLEN + payload.len());
        push_message(&mut req, msg_type, flags, seq, payload);
        self.send(&req)?;
        let mut interrupted = false;
        self.receive(|header, body| {
            // Leftovers of an earlier request on this socket.
            if header.seq != seq {
                return Ok(None);
            }
            if header.flags & libc::NLM_F_DUMP_INTR as u16 != 0 {
                interrupted = true;
            }
            Ok(match end_of_answer(header, body)? {
                Some(errno) => Some(Answer { errno, interrupted }),
                None if header.kind as i32 == libc::NLMSG_NOOP => None,
                None => {
                    on_message(header.kind, body);
                    None
                }
            })
        })
    }

    /// Sends `messages` (type, flags, payload) as one nftables transaction
    /// (between NFNL_MSG_BATCH_BEGIN and _END: the kernel applies all of them
    /// or none) and returns the first error's errno, 0 when all succeeded.
    pub(crate) fn batch(&mut self, messages: &[(u16, u16, Vec<u8>)]) -> std::io::Result<i32> {
        if messages.is_empty() {
            return Ok(0);
        }
        let mut batch_header = nfgenmsg(libc::AF_UNSPEC as u8);
        batch_header[2..4].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        let begin = self.next_seq();
        let mut req = Vec::new();
        push_message(
            &mut req,
            NFNL_MSG_BATCH_BEGIN,
            libc::NLM_F_REQUEST as u16,
            begin,
            &batch_header,
        );
        for (kind, flags, payload) in messages {
            let seq = self.next_seq();
            let flags = flags | (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
            push_message(&mut req, *kind, flags, seq, payload);
        }
        let end = self.next_seq();
        push_message(
            &mut req,
            NFNL_MSG_BATCH_END,
            libc::NLM_F_REQUEST as u16,
            end,
            &batch_header,
        );
        self.send(&req)?;
        // Every message asked for an ACK, so each gets exactly one answer;
        // an error about the batch markers themselves ends the batch early.
        let mut unanswered = messages.len();
        let mut first_error = 0;
        self.receive(|header, body| {
            // Sequence numbers wrap, so "within the batch" is measured from its start.
            if header.seq.wrapping_sub(begin) > end.wrapping_sub(begin) {
                return Ok(None);
            }
            let Some(errno) = end_of_answer(header, body)? else {
                return Ok(None);
            };
            if header.seq == begin || header.seq == end {
                return Ok(Some(errno));
            }
            if first_error == 0 {
                first_error = errno;
            }
            unanswered -= 1;
            Ok((unanswered == 0).then_some(first_error))
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, req: &[u8]) -> std::io::Result<()> {
        self.socket.send(req, 0).map(drop)
    }

    /// Receives datagrams and hands each message to `handle` until it
    /// returns an outcome.
    fn receive<T>(
        &mut self,
        mut handle: impl FnMut(Header, &[u8]) -> std::io::Result<Option<T>>,
    ) -> std::io::Result<T> {
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n > self.buf.len() {
                return Err(malformed("datagram larger than the receive buffer"));
            }
            let mut rest = &self.buf[..n];
            while !rest.is_empty() {
                let (header, body, next) = split_message(rest)?;
                rest = next;
                if let Some(outcome) = handle(header, body)? {
                    return Ok(outcome);
                }
            }
        }
    }
}

const NFNL_MSG_BATCH_BEGIN: u16 = libc::NLMSG_MIN_TYPE as u16;
const NFNL_MSG_BATCH_END: u16 = NFNL_MSG_BATCH_BEGIN + 1;

/// The fields of a netlink message header that answers are matched by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    kind: u16,
    flags: u16,
    seq: u32,
}

/// Appends one netlink message (header, then `payload`, padded to 4 bytes).
fn push_message(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, payload: &[u8]) {
    let mut header = NetlinkHeader::default();
    header.length = (NLMSG_HDRLEN + payload.len()) as u32;
    header.message_type = kind;
    header.flags = flags;
    header.sequence_number = seq;
    // The port id stays 0: the kernel assigns it.
    let start = buf.len();
    buf.resize(start + NLMSG_HDRLEN, 0);
    header.emit(&mut buf[start..]);
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// The first message of `buf`: its header, its body and what follows it.
fn split_message(buf: &[u8]) -> std::io::Result<(Header, &[u8], &[u8])> {
    let message =
        NetlinkBuffer::new_checked(buf).map_err(|e| malformed(&format!("netlink message: {e}")))?;
    let len = message.length() as usize;
    let parsed = Header {
        kind: message.message_type(),
        flags: message.flags(),
        seq: message.sequence_number(),
    };
    let rest = buf.get(align4(len)..).unwrap_or_default();
    Ok((parsed, &buf[NLMSG_HDRLEN..len], rest))
}

/// The errno an ACK, error or end-of-dump message carries (0: success);
/// `None` for data messages.
fn end_of_answer(header: Header, body: &[u8]) -> std::io::Result<Option<i32>> {
    match header.kind as i32 {
        // Both carry the (negated) errno first; an ACK is 0.
        libc::NLMSG_ERROR | libc::NLMSG_DONE => {
            let code = match body.get(..4) {
                Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                // An NLMSG_DONE without a body is a plain end of dump.
                None if header.kind as i32 == libc::NLMSG_DONE => 0,
                None => return Err(malformed("short error message")),
            };
            Ok(Some(-code))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_msg(table: &str, name: &str) -> Vec<u8> {
        let mut m = nfgenmsg(Family::Inet as u8);
        push_str_attr(&mut m, NFTA_CHAIN_TABLE, table);
        push_attr(&mut m, 2 /* NFTA_CHAIN_HANDLE */, &7u64.to_be_bytes());
        push_str_attr(&mut m, NFTA_CHAIN_NAME, name);
        m
    }

    #[test]
    fn chain_messages_are_parsed() {
        let m = chain_msg("weft", "svc-abc");
        let (table, name) = object_of(&m, &CHAINS).unwrap();
        assert_eq!(table, b"weft");
        assert_eq!(name, "svc-abc");
    }

    #[test]
    fn truncated_chain_messages_are_errors_not_panics() {
        let m = chain_msg("weft", "a-longer-chain-name");
        for cut in 0..m.len() {
            // Every prefix either parses (cut on an attribute boundary after
            // both names, impossible here) or is reported as malformed.
            assert!(
                object_of(&m[..cut], &CHAINS).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
    }

    #[test]
    fn attributes_are_padded_and_nested_lengths_patched() {
        let mut buf = Vec::new();
        push_nested(&mut buf, 1, |b| push_attr(b, 2, &[9, 9, 9]));
        // nested header 4 + inner header 4 + 3 value bytes + 1 padding: the
        // inner attribute's padding counts in the nest, as the kernel does it.
        assert_eq!(buf.len(), 12);
        assert_eq!(u16::from_ne_bytes([buf[0], buf[1]]), 12);
        assert_eq!(
            u16::from_ne_bytes([buf[2], buf[3]]),
            1 | libc::NLA_F_NESTED as u16
        );
        let outer: Vec<_> = Attrs::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(outer.len(), 1);
        assert_eq!(outer[0].0, 1, "the NESTED flag is masked off");
        let inner: Vec<_> = Attrs::new(outer[0].1).collect::<Result<_, _>>().unwrap();
        assert_eq!(inner, vec![(2, &[9u8, 9, 9][..])]);
    }

    #[test]
    fn an_attribute_running_past_the_buffer_is_an_error() {
        let buf = [200u8, 0, 1, 0, 0, 0, 0, 0];
        let mut it = Attrs::new(&buf);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }
}
