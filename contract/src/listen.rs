//! The listening socket of both binaries (feature `listen`). `:PORT`, the default, is `[::]`
//! with IPv4 accepted as v4-mapped addresses, so one socket answers on IPv4-only, IPv6-only and
//! dual-stack pods (the kubelet probes, and the API server calls, the pod IP of whichever family
//! the pod has); on a kernel without IPv6 it is `0.0.0.0`. An address the user gave is used as
//! given.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use rustix::io::Errno;
use tokio::net::{TcpListener, TcpSocket};

/// Where a server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Every interface of both families (`:PORT`).
    AllInterfaces(u16),
    /// Exactly this address, as the user wrote it.
    Addr(SocketAddr),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::AllInterfaces(port) => write!(f, ":{port}"),
            Listen::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

/// `:PORT` (all interfaces of both families, as Go's net/http), `0.0.0.0:PORT`, `[::]:PORT`
/// or `host:PORT` (clap's value parser for the listen flags).
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Listen::Addr(addr));
    }
    let err = || {
        format!(
            "\"{s}\" is not an address to listen on (use :PORT for every interface, IPv6 and \
             IPv4, or an address such as 0.0.0.0:PORT or 127.0.0.1:PORT)"
        )
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(err)?;
    let port: u16 = port.parse().map_err(|_| err())?;
    if host.is_empty() {
        return Ok(Listen::AllInterfaces(port));
    }
    if host == "localhost" {
        return Ok(Listen::Addr(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        )));
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(Listen::Addr)
        .ok_or_else(err)
}

/// Binding failed: the address tried last and why.
#[derive(Debug)]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

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

/// Binds (inside a Tokio runtime), falling back to IPv4 as [`fallback`] says; `on_fallback`
/// hears why, so the caller can log it its own way.
pub fn bind(
    listen: Listen,
    on_fallback: impl FnOnce(&io::Error, SocketAddr, SocketAddr),
) -> Result<TcpListener, BindError> {
    let first = first_bind(listen);
    match bind_addr(first) {
        Ok(listener) => Ok(listener),
        Err(err) => {
            let Some(v4) = fallback(listen, &err) else {
                return Err(BindError {
                    addr: first,
                    source: err,
                });
            };
            on_fallback(&err, first, v4);
            bind_addr(v4).map_err(|source| BindError { addr: v4, source })
        }
    }
}

fn bind_addr(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            // Set, not left to net.ipv6.bindv6only: a node where it is 1 would otherwise give an
            // IPv6-only listener that IPv4 clients cannot reach.
            socket2::SockRef::from(&socket).set_only_v6(false)?;
            socket
        }
    };
    // As TcpListener::bind: a restarted server can take its port while old connections linger.
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

    #[test]
    fn listen_addresses() {
        let addr = |s: &str| Ok(Listen::Addr(s.parse().unwrap()));
        let cases: &[(&str, Result<Listen, ()>)] = &[
            (":4040", Ok(Listen::AllInterfaces(4040))),
            (" :80 ", Ok(Listen::AllInterfaces(80))),
            // An explicit address is honoured as given, wildcard or not.
            ("0.0.0.0:4040", addr("0.0.0.0:4040")),
            ("[::]:4040", addr("[::]:4040")),
            ("[::1]:4041", addr("[::1]:4041")),
            ("localhost:4040", addr("127.0.0.1:4040")),
            ("4040", Err(())),
            (":http", Err(())),
            (":70000", Err(())),
            ("nowhere", Err(())),
        ];
        for (input, want) in cases {
            let got = parse_listen(input);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{input}"),
                (Err(()), Err(e)) => assert!(e.contains(":PORT for every interface"), "{e}"),
                _ => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
        // What --help shows and what the webhook writes parse back to the same value.
        for l in [
            Listen::AllInterfaces(4040),
            Listen::Addr("[::1]:9".parse().unwrap()),
        ] {
            assert_eq!(parse_listen(&l.to_string()), Ok(l));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_default_accepts_ipv4_and_ipv6_and_a_port_in_use_is_an_error() {
        let listener = bind(Listen::AllInterfaces(0), |_, _, _| {}).unwrap();
        let port = listener.local_addr().unwrap().port();
        for host in ["127.0.0.1", "[::1]"] {
            let addr: SocketAddr = format!("{host}:{port}").parse().unwrap();
            let (connected, accepted) =
                tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
            connected.unwrap_or_else(|e| panic!("{addr}: {e}"));
            accepted.unwrap();
        }
        let err = bind(Listen::AllInterfaces(port), |_, _, _| {
            panic!("a port in use is not a reason to fall back")
        })
        .unwrap_err();
        assert_eq!(err.addr, format!("[::]:{port}").parse().unwrap());
        assert_eq!(err.source.kind(), io::ErrorKind::AddrInUse);
    }
}
