//! Layer-2 announcement of addresses no interface owns (LoadBalancer IPs,
//! as MetalLB's layer-2 mode does): an ARP responder on one interface that
//! answers "who has X?" for the announced IPv4 addresses with the
//! interface's MAC, and sends gratuitous ARP when it takes an address over,
//! so neighbours switch to this node at once after a failover.
//!
//! It owns one AF_PACKET socket and one background thread per responder. It
//! never assigns addresses, never touches the kernel's neighbour table or
//! its own ARP handling (sysctls), and never answers for an address that is
//! not in the announced set. IPv6 (NDP) is not handled here.

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many gratuitous replies announce a newly taken address, and how far
/// apart: a single frame can be lost, three cover a busy segment.
const GARP_COUNT: u8 = 3;
const GARP_INTERVAL: Duration = Duration::from_millis(50);

/// The longest the thread sleeps without looking at its stop flag, in case
/// a wake-up is ever missed.
const MAX_SLEEP: Duration = Duration::from_secs(1);

const ETH_HDR: usize = 14;
/// Ethernet's minimum frame (without FCS); shorter ARP frames are padded,
/// as some switches and NICs drop runts.
const MIN_FRAME: usize = 60;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
const BROADCAST: [u8; 6] = [0xff; 6];

#[derive(Debug, thiserror::Error)]
pub enum ArpError {
    #[error("invalid interface name {0:?}")]
    BadName(String),
    #[error("no interface {0} in this network namespace")]
    NoSuchInterface(String),
    #[error("{ifname} is not an Ethernet interface (hardware type {hw_type}); ARP needs one")]
    NotEthernet { ifname: String, hw_type: u16 },
    #[error("cannot {what} for ARP on {ifname}: {source}")]
    Io {
        ifname: String,
        what: &'static str,
        source: io::Error,
    },
}

/// Answers ARP requests for the announced addresses on one interface until
/// dropped.
pub struct ArpResponder {
    shared: Arc<Shared>,
    mac: [u8; 6],
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    /// An eventfd the thread polls next to its socket, so announce() and
    /// drop take effect at once rather than at the next timeout.
    wake: OwnedFd,
}

#[derive(Default)]
struct State {
    announced: BTreeSet<Ipv4Addr>,
    /// Gratuitous replies still to send.
    pending: Vec<Pending>,
}

struct Pending {
    addr: Ipv4Addr,
    left: u8,
    due: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every
        // update is a plain assignment.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer to an fd we own. A
        // failure means the counter is already non-zero: a wake-up is pending.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

impl ArpResponder {
    /// Opens an AF_PACKET socket (ETH_P_ARP) bound to interface `ifname` in
    /// the caller's network namespace and starts a background OS thread
    /// that answers ARP requests for the announced addresses with the
    /// interface's MAC address (read once, here).
    pub fn start(ifname: &str) -> Result<ArpResponder, ArpError> {
        let io_err = |what: &'static str| {
            let ifname = ifname.to_string();
            move |source| ArpError::Io {
                ifname,
                what,
                source,
            }
        };
        let cname = check_name(ifname)?;
        // SAFETY: cname is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(ArpError::NoSuchInterface(ifname.to_string()));
        }
        // Protocol 0 until bind: a packet socket opened with ETH_P_ARP
        // receives from every interface in the window before bind().
        // SAFETY: creating a socket has no memory effects; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if raw < 0 {
            return Err(io_err("open a packet socket")(io::Error::last_os_error()));
        }
        // SAFETY: raw is a fresh, valid fd that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let mac = hardware_address(sock.as_raw_fd(), ifname)?;
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(io_err("bind the packet socket")(io::Error::last_os_error()));
        }
        // SAFETY: eventfd has no memory effects; the fd is owned below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io_err("create an eventfd")(io::Error::last_os_error()));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
            // SAFETY: efd is a fresh, valid fd that nothing else owns.
            wake: unsafe { OwnedFd::from_raw_fd(efd) },
        });
        let worker = Worker {
            sock,
            mac,
            ifname: ifname.to_string(),
            shared: shared.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("weft-arp-{ifname}"))
            .spawn(move || worker.run())
            .map_err(io_err("start the responder thread"))?;
        tracing::debug!(ifname, mac = %crate::netlink::format_mac(&mac), "ARP responder started");
        Ok(ArpResponder {
            shared,
            mac,
            thread: Some(thread),
        })
    }

    /// Replaces the set of announced IPv4 addresses. For every address that
    /// was not announced before, sends 3 gratuitous ARP replies (broadcast,
    /// ~50 ms apart, in the background) so neighbours update their caches
    /// at once. Addresses no host can own (unspecified, broadcast,
    /// multicast, loopback) are left out.
    pub fn announce(&self, addrs: &BTreeSet<Ipv4Addr>) {
        let (ok, bad): (BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Addr>) =
            addrs.iter().partition(|a| announceable(**a));
        if !bad.is_empty() {
            tracing::warn!(?bad, "not announcing addresses no host can own");
        }
        let now = Instant::now();
        let mut state = self.shared.lock();
        let new: Vec<Ipv4Addr> = ok.difference(&state.announced).copied().collect();
        state.pending.retain(|p| ok.contains(&p.addr));
        state.pending.extend(new.into_iter().map(|addr| Pending {
            addr,
            left: GARP_COUNT,
            due: now,
        }));
        state.announced = ok;
        drop(state);
        self.shared.wake();
    }

    /// The addresses answered for now.
    pub fn announced(&self) -> BTreeSet<Ipv4Addr> {
        self.shared.lock().announced.clone()
    }

    /// The MAC address the responder answers with.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

impl std::fmt::Debug for ArpResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArpResponder")
            .field("mac", &crate::netlink::format_mac(&self.mac))
            .field("announced", &self.announced())
            .finish()
    }
}

impl Drop for ArpResponder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn announceable(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

fn check_name(ifname: &str) -> Result<std::ffi::CString, ArpError> {
    let ok = !ifname.is_empty()
        && ifname.len() < libc::IFNAMSIZ
        && !ifname.contains(['/', '\0'])
        && !ifname.chars().any(char::is_whitespace);
    ok.then(|| std::ffi::CString::new(ifname).ok())
        .flatten()
        .ok_or_else(|| ArpError::BadName(ifname.to_string()))
}

/// The interface's MAC, asked with SIOCGIFHWADDR on `fd` (a socket in the
/// caller's namespace; /sys/class/net would show the mount namespace's).
fn hardware_address(fd: RawFd, ifname: &str) -> Result<[u8; 6], ArpError> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // check_name guaranteed fewer than IFNAMSIZ bytes: the name stays
    // NUL-terminated.
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name from and writes a sockaddr into req.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR as _, &mut req) };
    if rc != 0 {
        return Err(ArpError::Io {
            ifname: ifname.to_string(),
            what: "read the MAC address",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(ArpError::NotEthernet {
            ifname: ifname.to_string(),
            hw_type: hw.sa_family,
        });
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

/// An ARP request worth answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
}

/// Parses an Ethernet frame carrying an ARP request for IPv4 over Ethernet;
/// anything else (replies, other hardware or protocol types, short or
/// foreign frames) is `None`.
fn parse_request(frame: &[u8]) -> Option<Request> {
    let be16 = |at: usize| Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
    let mac = |at: usize| <[u8; 6]>::try_from(frame.get(at..at + 6)?).ok();
    let ip = |at: usize| {
        Some(Ipv4Addr::from(
            <[u8; 4]>::try_from(frame.get(at..at + 4)?).ok()?,
        ))
    };
    let arp = ETH_HDR;
    let well_formed = be16(12)? == ETHERTYPE_ARP
        && be16(arp)? == 1 // hardware type: Ethernet
        && be16(arp + 2)? == ETHERTYPE_IPV4
        && frame.get(arp + 4) == Some(&6)
        && frame.get(arp + 5) == Some(&4)
        && be16(arp + 6)? == ARPOP_REQUEST;
    if !well_formed {
        return None;
    }
    Some(Request {
        sender_mac: mac(arp + 8)?,
        sender_ip: ip(arp + 14)?,
        target_ip: ip(arp + 24)?,
    })
}

/// An ARP reply frame (padded to the Ethernet minimum).
fn reply_frame(
    eth_dst: [u8; 6],
    our_mac: [u8; 6],
    our_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(MIN_FRAME);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&our_mac);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&ARPOP_REPLY.to_be_bytes());
    f.extend_from_slice(&our_mac);
    f.extend_from_slice(&our_ip.octets());
    f.extend_from_slice(&target_mac);
    f.extend_from_slice(&target_ip.octets());
    f.resize(MIN_FRAME, 0);
    f
}

/// The reply to `req`, sent unicast to the asker.
fn answer(req: &Request, our_mac: [u8; 6]) -> Vec<u8> {
    reply_frame(
        req.sender_mac,
        our_mac,
        req.target_ip,
        req.sender_mac,
        req.sender_ip,
    )
}

/// A gratuitous ARP reply for `addr`, broadcast. Linux counts a reply as
/// gratuitous — overriding a neighbour entry at once instead of only after
/// the entry's 1 s lock time — only when sender and target IP are equal
/// *and* the target MAC equals the sender MAC, so the target MAC is ours,
/// not the broadcast address.
fn gratuitous(addr: Ipv4Addr, our_mac: [u8; 6]) -> Vec<u8> {
    reply_frame(BROADCAST, our_mac, addr, our_mac, addr)
}

/// The responder's thread: owns the socket.
struct Worker {
    sock: OwnedFd,
    mac: [u8; 6],
    ifname: String,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(self) {
        // ARP frames are 42–60 bytes; a larger frame is not ARP for us and
        // is simply cut off.
        let mut buf = [0u8; 256];
        let mut was_down = false;
        while !self.shared.stop.load(Ordering::Acquire) {
            let sleep = self
                .send_due_gratuitous()
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            let mut fds = [
                libc::pollfd {
                    fd: self.sock.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.shared.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // Round up so that a due time less than 1 ms away is not a busy loop.
            let ms = sleep.as_micros().div_ceil(1000) as libc::c_int;
            // SAFETY: fds is a valid array of 2 pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if n < 0 {
                // EINTR; nothing else can happen with valid fds.
                continue;
            }
            if fds[1].revents != 0 {
                let mut counter = [0u8; 8];
                // SAFETY: reads 8 bytes into a valid buffer; resets the eventfd.
                unsafe { libc::read(fds[1].fd, counter.as_mut_ptr().cast(), counter.len()) };
            }
            if fds[0].revents != 0 {
                self.drain(&mut buf, &mut was_down);
            }
        }
        tracing::debug!(ifname = %self.ifname, "ARP responder stopped");
    }

    /// Reads and answers every queued frame.
    fn drain(&self, buf: &mut [u8], was_down: &mut bool) {
        loop {
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid writable buffers of the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR) => continue,
                    // The interface went down; the kernel re-attaches the
                    // socket by itself when it comes back up. (An interface
                    // deleted and re-created is another interface: the
                    // responder must be started again.)
                    Some(libc::ENETDOWN) => {
                        if !*was_down {
                            tracing::warn!(
                                ifname = %self.ifname,
                                "interface is down; ARP answers resume when it is up"
                            );
                        }
                        *was_down = true;
                        return;
                    }
                    _ => {
                        tracing::warn!(
                            ifname = %self.ifname,
                            error = %err,
                            "receiving ARP frames failed"
                        );
                        return;
                    }
                }
            }
            *was_down = false;
            // Frames this host sends (our own answers among them) come back
            // as OUTGOING; unicast frames for other hosts (promiscuous mode)
            // are not questions to us.
            if matches!(
                from.sll_pkttype,
                libc::PACKET_OUTGOING | libc::PACKET_OTHERHOST
            ) {
                continue;
            }
            let frame = buf.get(..n as usize).unwrap_or_default();
            if let Some(req) = parse_request(frame) {
                self.handle(&req);
            }
        }
    }

    fn handle(&self, req: &Request) {
        if req.sender_mac == self.mac || !self.shared.lock().announced.contains(&req.target_ip) {
            return;
        }
        if req.sender_ip == req.target_ip {
            tracing::warn!(
                ifname = %self.ifname,
                ip = %req.target_ip,
                mac = %crate::netlink::format_mac(&req.sender_mac),
                "another host announces an address announced here"
            );
        }
        tracing::debug!(
            ifname = %self.ifname,
            ip = %req.target_ip,
            asker = %req.sender_ip,
            mac = %crate::netlink::format_mac(&req.sender_mac),
            "answering ARP request"
        );
        self.send(&answer(req, self.mac));
    }

    /// Sends the gratuitous replies that are due; returns how long until
    /// the next one, if any is left.
    fn send_due_gratuitous(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut due = Vec::new();
        let next = {
            let mut state = self.shared.lock();
            for p in state.pending.iter_mut().filter(|p| p.due <= now) {
                due.push(p.addr);
                p.left = p.left.saturating_sub(1);
                p.due = now + GARP_INTERVAL;
            }
            state.pending.retain(|p| p.left > 0);
            state.pending.iter().map(|p| p.due).min()
        };
        for addr in due {
            tracing::debug!(ifname = %self.ifname, ip = %addr, "sending gratuitous ARP");
            self.send(&gratuitous(addr, self.mac));
        }
        next.map(|t| t.saturating_duration_since(Instant::now()))
    }

    fn send(&self, frame: &[u8]) {
        // The socket is bound to the interface and ETH_P_ARP, so a plain
        // send() goes out there with the frame's own Ethernet header.
        // SAFETY: frame is a valid buffer of frame.len() bytes.
        let n = unsafe { libc::send(self.sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            tracing::debug!(
                ifname = %self.ifname,
                error = %io::Error::last_os_error(),
                "sending an ARP frame failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASKER: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
    const OURS: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];

    /// A request as Linux sends it: "who has 198.18.251.100? tell 198.18.251.1".
    fn request_bytes() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend(ASKER);
        f.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend(ASKER);
        f.extend([198, 18, 251, 1]);
        f.extend([0; 6]);
        f.extend([198, 18, 251, 100]);
        f
    }

    #[test]
    fn requests_are_parsed() {
        let req = parse_request(&request_bytes()).unwrap();
        assert_eq!(
            req,
            Request {
                sender_mac: ASKER,
                sender_ip: Ipv4Addr::new(198, 18, 251, 1),
                target_ip: Ipv4Addr::new(198, 18, 251, 100),
            }
        );
        // Padding after the ARP payload is fine.
        let mut padded = request_bytes();
        padded.resize(60, 0);
        assert_eq!(parse_request(&padded), Some(req));
    }

    #[test]
    fn other_frames_are_ignored() {
        let base = request_bytes();
        let with = |at: usize, v: u8| {
            let mut f = base.clone();
            f[at] = v;
            f
        };
        assert_eq!(parse_request(&with(21, 2)), None, "a reply");
        assert_eq!(parse_request(&with(13, 0x00)), None, "not ARP");
        assert_eq!(parse_request(&with(15, 6)), None, "not Ethernet");
        assert_eq!(parse_request(&with(16, 0x86)), None, "not IPv4");
        assert_eq!(parse_request(&with(18, 8)), None, "odd hardware length");
        assert_eq!(parse_request(&with(19, 16)), None, "odd protocol length");
        for cut in 0..base.len() {
            assert_eq!(parse_request(&base[..cut]), None, "{cut} bytes");
        }
    }

    #[test]
    fn answers_go_unicast_to_the_asker() {
        let req = parse_request(&request_bytes()).unwrap();
        let f = answer(&req, OURS);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &ASKER, "Ethernet destination");
        assert_eq!(&f[6..12], &OURS, "Ethernet source");
        assert_eq!(&f[12..22], &[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
        assert_eq!(&f[22..28], &OURS, "sender MAC");
        assert_eq!(&f[28..32], &[198, 18, 251, 100], "sender IP");
        assert_eq!(&f[32..38], &ASKER, "target MAC");
        assert_eq!(&f[38..42], &[198, 18, 251, 1], "target IP");
        assert!(f[42..].iter().all(|b| *b == 0));
    }

    #[test]
    fn gratuitous_replies_are_broadcast_with_equal_sender_and_target() {
        let f = gratuitous(Ipv4Addr::new(198, 18, 251, 100), OURS);
        assert_eq!(&f[0..6], &BROADCAST);
        assert_eq!(&f[20..22], &[0, 2], "a reply");
        assert_eq!(&f[22..28], &f[32..38], "target MAC = sender MAC");
        assert_eq!(&f[28..32], &f[38..42], "target IP = sender IP");
        // It is not mistaken for a request by our own parser.
        assert_eq!(parse_request(&f), None);
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(check_name("eth0").is_ok());
        for bad in ["", "a/b", "a b", "x\0y", "0123456789abcdef"] {
            assert!(
                matches!(check_name(bad), Err(ArpError::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unusable_addresses_are_not_announceable() {
        assert!(announceable(Ipv4Addr::new(198, 18, 251, 100)));
        for a in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1"] {
            assert!(!announceable(a.parse().unwrap()), "{a}");
        }
    }
}
