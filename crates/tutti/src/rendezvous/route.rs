//! Name resolution and "which of my addresses faces that host", for rendezvous.
//!
//! A rank publishes the address its peers should connect to. On a host with several interfaces
//! (loopback, docker bridge, ethernet, infiniband IPoIB) the right one is the interface the kernel
//! routes towards the store's host: the cluster network the job was told to use. We ask the kernel
//! by `connect`ing a UDP socket to the store (which sends no packet) and reading its local address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

/// The local address the kernel would use to reach `host:port`.
///
/// `host` is a name or an IPv4/IPv6 literal (brackets allowed: `[::1]`); the first resolved address
/// is used. A loopback target gives the loopback address of its family (`127.0.0.1` or `::1`).
/// Fails when `host` does not resolve or when no route leads to it.
pub fn local_ip_towards(host: &str, port: u16) -> io::Result<IpAddr> {
    let target = resolve(host, port)?;
    if target.ip().is_loopback() {
        return Ok(match target {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let unspecified: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = UdpSocket::bind(unspecified)?;
    // A UDP connect only selects a route and a source address; no packet leaves the host. Port 0
    // cannot be connected to, and any port selects the same route.
    let target = SocketAddr::new(target.ip(), port.max(1));
    probe
        .connect(target)
        .map_err(|e| annotate(e, &format!("no route to {}", host_port(host, port))))?;
    Ok(probe.local_addr()?.ip())
}

/// The first address `host:port` resolves to; the error names the host.
pub fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    resolve_all(host, port)?.into_iter().next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("host '{host}' resolved to no address"),
        )
    })
}

/// Every address `host:port` resolves to, in the resolver's order; the error names the host.
pub fn resolve_all(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let bare = host.trim().trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty host name",
        ));
    }
    (bare, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|e| annotate(e, &format!("cannot resolve host '{host}'")))
}

/// `host:port`, with brackets around an IPv6 literal (`[::1]:29500`).
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn annotate(e: io::Error, context: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{context}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_give_loopback() {
        assert_eq!(
            local_ip_towards("127.0.0.1", 1).unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            local_ip_towards("127.0.0.7", 0).unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert!(local_ip_towards("localhost", 29_500).unwrap().is_loopback());
    }

    #[test]
    fn ipv6_literals_resolve_with_or_without_brackets() {
        let a = resolve("[::1]", 5).unwrap();
        let b = resolve("::1", 5).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 5));
    }

    #[test]
    fn errors_name_the_host() {
        let e = resolve("no-such-host.invalid", 1).unwrap_err();
        assert!(e.to_string().contains("no-such-host.invalid"), "{e}");
        assert!(resolve("", 1).is_err());
    }

    #[test]
    fn host_port_brackets_ipv6() {
        assert_eq!(host_port("::1", 80), "[::1]:80");
        assert_eq!(host_port("[::1]", 80), "[::1]:80");
        assert_eq!(host_port("node7", 29_500), "node7:29500");
    }
}
