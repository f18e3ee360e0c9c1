//! The HTTP API's listening socket. By default it is `[::]` with IPv4 accepted as v4-mapped
//! addresses, so one socket answers the kubelet's probes on IPv4-only, IPv6-only and dual-stack
//! pods; on a kernel without IPv6 it is `0.0.0.0`.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use rustix::io::Errno;
use tokio::net::{TcpListener, TcpSocket};
use tracing::info;

use crate::config::Listen;
use crate::error::Error;

/// The address to bind first.
pub fn first_bind(listen: Listen) -> SocketAddr {
    match listen {
        Listen::AllInterfaces(port) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
        Listen::Addr(addr) => addr,
    }
}

/// After binding [`first_bind`] failed with `err`: the address to bind instead, if any. Only
/// the default listener falls back, and only when the kernel has no IPv6 (booted with
/// `ipv6.disable=1`: no IPv6 sockets; IPv6 switched off: no IPv6 address to bind); an address
/// the user gave is never replaced, and a port in use is an error either way.
pub fn fallback(listen: Listen, err: &io::Error) -> Option<SocketAddr> {
    let Listen::AllInterfaces(port) = listen else {
        return None;
    };
    let no_ipv6 = matches!(
        Errno::from_io_error(err),
        Some(Errno::AFNOSUPPORT | Errno::PROTONOSUPPORT | Errno::ADDRNOTAVAIL)
    );
    no_ipv6.then(|| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
}

/// Binds the HTTP API's socket (inside a Tokio runtime), falling back to IPv4 as [`fallback`]
/// says, with one log line when it does.
pub fn bind(listen: Listen) -> Result<TcpListener, Error> {
    let first = first_bind(listen);
    match bind_addr(first) {
        Ok(listener) => Ok(listener),
        Err(err) => {
            let Some(v4) = fallback(listen, &err) else {
                return Err(Error::Bind {
                    addr: first,
                    source: err,
                });
            };
            info!("IPv6 is not available here ({err} on {first}): listening on {v4}, IPv4 only");
            bind_addr(v4).map_err(|source| Error::Bind { addr: v4, source })
        }
    }
}

fn bind_addr(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            // Set, not left to net.ipv6.bindv6only: a node where it is 1 would otherwise give an
            // IPv6-only listener that IPv4 probes cannot reach.
            socket2::SockRef::from(&socket).set_only_v6(false)?;
            socket
        }
    };
    // As TcpListener::bind: a restarted elector can take its port while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_tries_ipv6_then_ipv4_only_when_the_kernel_has_no_ipv6() {
        let all = Listen::AllInterfaces(4040);
        let given = |s: &str| Listen::Addr(s.parse().unwrap());
        let os = |e: Errno| io::Error::from_raw_os_error(e.raw_os_error());
        let v4 = Some("0.0.0.0:4040".parse().unwrap());
        let cases: &[(Listen, &str, io::Error, Option<SocketAddr>)] = &[
            // ipv6.disable=1: the kernel has no AF_INET6 sockets at all.
            (all, "[::]:4040", os(Errno::AFNOSUPPORT), v4),
            (all, "[::]:4040", os(Errno::PROTONOSUPPORT), v4),
            // IPv6 switched off (disable_ipv6=1): nothing to bind.
            (all, "[::]:4040", os(Errno::ADDRNOTAVAIL), v4),
            // Not about IPv6: falling back would hide the real problem.
            (all, "[::]:4040", os(Errno::ADDRINUSE), None),
            (all, "[::]:4040", os(Errno::ACCESS), None),
            (all, "[::]:4040", io::Error::other("odd"), None),
            // What the user wrote is what they get.
            (
                given("[::]:4040"),
                "[::]:4040",
                os(Errno::AFNOSUPPORT),
                None,
            ),
            (given("[::1]:9"), "[::1]:9", os(Errno::ADDRNOTAVAIL), None),
            (
                given("0.0.0.0:4040"),
                "0.0.0.0:4040",
                os(Errno::ADDRNOTAVAIL),
                None,
            ),
            (
                given("127.0.0.1:1"),
                "127.0.0.1:1",
                os(Errno::ADDRINUSE),
                None,
            ),
        ];
        for (listen, first, err, want) in cases {
            assert_eq!(first_bind(*listen), first.parse().unwrap(), "{listen}");
            assert_eq!(fallback(*listen, err), *want, "{listen} after {err}");
        }
    }
}
