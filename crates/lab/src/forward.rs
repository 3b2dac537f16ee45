//! A lab's door from the host into one of its namespaces: TCP connections
//! accepted on a host loopback address are carried to an address inside
//! the namespace (the API server of a lab whose control plane is
//! Kubernetes, reached by `kubectl` on the host), without routing the host
//! into the lab or the lab out to the host.
//!
//! It owns its listening socket, and per connection one socket made inside
//! the namespace and two copying threads. It only listens on loopback
//! addresses: the lab must not be reachable from the host's networks.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use weft_datapath::NetNs;

/// How long a connection into the namespace may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{0} is not a loopback address: the lab is only ever opened to the host itself")]
    NotLoopback(SocketAddr),
    #[error("listening on {listen}: {source} (is another lab or program using the port?)")]
    Listen {
        listen: SocketAddr,
        source: io::Error,
    },
}

/// A bound forwarder, not yet serving.
pub struct Forwarder {
    listener: TcpListener,
    ns: NetNs,
    to: SocketAddr,
}

impl Forwarder {
    /// Listens on `listen` (a loopback address of the caller's namespace)
    /// for connections to carry to `to` inside `ns`.
    pub fn bind(listen: SocketAddr, ns: NetNs, to: SocketAddr) -> Result<Forwarder, ForwardError> {
        if !listen.ip().is_loopback() {
            return Err(ForwardError::NotLoopback(listen));
        }
        let listener =
            TcpListener::bind(listen).map_err(|source| ForwardError::Listen { listen, source })?;
        Ok(Forwarder { listener, ns, to })
    }

    /// The address it listens on (the port chosen when 0 was asked).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends; a connection that cannot be carried
    /// is closed and logged, the others go on.
    pub fn serve(self) -> ! {
        loop {
            match self.listener.accept() {
                Ok((client, from)) => {
                    if let Err(e) = self.carry(client) {
                        eprintln!("weft lab forward: {from} → {}: {e}", self.to);
                    }
                }
                Err(e) => {
                    eprintln!("weft lab forward: accepting: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Opens the inner connection (from inside the namespace) and copies
    /// both ways until each side closes.
    fn carry(&self, client: TcpStream) -> io::Result<()> {
        let to = self.to;
        let inner = self
            .ns
            .run_in(|| TcpStream::connect_timeout(&to, CONNECT_TIMEOUT))
            .map_err(io::Error::other)??;
        let (client_in, inner_out) = (client.try_clone()?, inner.try_clone()?);
        std::thread::spawn(move || copy(client_in, inner_out));
        std::thread::spawn(move || copy(inner, client));
        Ok(())
    }
}

/// Copies `from` into `to`, then tells `to` nothing more comes.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use weft_datapath::scratch::Namespaces;

    /// Echoes every connection to a loopback port of `ns`; the port.
    fn echo_in(ns: &NetNs) -> SocketAddr {
        let listener = ns
            .run_in(|| TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut back = conn.try_clone().unwrap();
                std::thread::spawn(move || io::copy(&mut &conn, &mut back));
            }
        });
        addr
    }

    #[test]
    fn connections_on_the_host_reach_a_loopback_address_inside_the_namespace() {
        let mut scratch = Namespaces::new("fwd");
        let (_, ns) = scratch.add("inner");
        crate::control_plane::loopback_up(&ns).unwrap();
        let inner = echo_in(&ns);
        let forwarder = Forwarder::bind("127.0.0.1:0".parse().unwrap(), ns, inner).unwrap();
        let outer = forwarder.local_addr().unwrap();
        std::thread::spawn(move || forwarder.serve());
        for n in 0..3 {
            let mut conn = TcpStream::connect(outer).unwrap();
            let text = format!("hello {n}");
            conn.write_all(text.as_bytes()).unwrap();
            conn.shutdown(Shutdown::Write).unwrap();
            let mut back = String::new();
            conn.read_to_string(&mut back).unwrap();
            assert_eq!(back, text);
        }
    }

    #[test]
    fn only_loopback_addresses_are_listened_on() {
        let ns = NetNs::current().unwrap();
        let to = "127.0.0.1:6443".parse().unwrap();
        let outside = "0.0.0.0:0".parse().unwrap();
        assert!(matches!(
            Forwarder::bind(outside, ns, to),
            Err(ForwardError::NotLoopback(_))
        ));
    }
}
