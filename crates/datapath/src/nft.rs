//! nftables: rule sets are generated as text by the callers and applied here
//! atomically with `nft -f -` (one transaction: all of it or none of it).
//!
//! [`chain_exists`] asks the kernel directly over NETLINK_NETFILTER; it is a
//! single round trip (tens of microseconds), where running `nft list` costs
//! milliseconds, and lets hot paths skip re-applying rules already in place.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::netns::NetNs;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft ({0}); install the nftables package")]
    Spawn(std::io::Error),
    #[error("nft rejected the rule set: {stderr}")]
    Rejected { stderr: String },
    #[error("nftables netlink query failed: {0}")]
    Query(std::io::Error),
}

/// Applies `script` as one nftables transaction in the caller's namespace,
/// or inside `netns` when given.
pub fn apply(script: &str, netns: Option<&NetNs>) -> Result<(), NftError> {
    let mut cmd = match netns {
        Some(ns) => ns.command("nft"),
        None => Command::new("nft"),
    };
    let mut child = cmd
        .args(["-f", "-"])
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
    Ip6 = 10,
}

/// Whether chain `chain` exists in table `table` of `family`, asked of the
/// kernel of the calling thread's namespace.
pub fn chain_exists(family: Family, table: &str, chain: &str) -> Result<bool, NftError> {
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_GETCHAIN: u16 = 4;
    const NFTA_CHAIN_TABLE: u16 = 1;
    const NFTA_CHAIN_NAME: u16 = 3;

    let mut payload = vec![family as u8, 0 /* NFNETLINK_V0 */, 0, 0];
    push_str_attr(&mut payload, NFTA_CHAIN_TABLE, table);
    push_str_attr(&mut payload, NFTA_CHAIN_NAME, chain);
    let msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    let reply = netlink_roundtrip(libc::NETLINK_NETFILTER, msg_type, flags, &payload)
        .map_err(NftError::Query)?;
    match reply {
        0 => Ok(true),
        e if e == libc::ENOENT => Ok(false),
        e => Err(NftError::Query(std::io::Error::from_raw_os_error(e))),
    }
}

fn push_str_attr(buf: &mut Vec<u8>, kind: u16, value: &str) {
    let len = 4 + value.len() + 1;
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value.as_bytes());
    buf.push(0);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

/// Sends one request and returns the errno of the kernel's answer (0 when it
/// answered with data or a plain ACK).
fn netlink_roundtrip(
    protocol: i32,
    msg_type: u16,
    flags: u16,
    payload: &[u8],
) -> std::io::Result<i32> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: creating a socket has no memory effects; the fd is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh, valid fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = 16 + payload.len();
    let mut req = Vec::with_capacity(len);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&msg_type.to_ne_bytes());
    req.extend_from_slice(&flags.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: kernel assigns
    req.extend_from_slice(payload);
    // SAFETY: req is a valid buffer of req.len() bytes.
    let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut off = 0usize;
        let n = n as usize;
        while off + 16 <= n {
            let mlen =
                u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
            let mtype = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap_or_default());
            if mtype == libc::NLMSG_ERROR as u16 && off + 20 <= n {
                let code =
                    i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap_or_default());
                return Ok(-code);
            }
            if mtype == libc::NLMSG_DONE as u16 {
                return Ok(0);
            }
            if mlen < 16 {
                break;
            }
            // A data message means the object exists; the ACK that follows
            // carries 0, so keep reading for it.
            off += (mlen + 3) & !3;
        }
    }
}
