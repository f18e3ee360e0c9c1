//! The HTTP API's listening socket: [`contract::listen`] (dual-stack by default), with the
//! elector's error and log line.

use tokio::net::TcpListener;
use tracing::info;

use crate::config::Listen;
use crate::error::Error;

/// Binds the HTTP API's socket (inside a Tokio runtime), falling back to IPv4 only on a kernel
/// without IPv6, with one log line when it does.
pub fn bind(listen: Listen) -> Result<TcpListener, Error> {
    contract::listen::bind(listen, |err, first, v4| {
        info!("IPv6 is not available here ({err} on {first}): listening on {v4}, IPv4 only");
    })
    .map_err(|e| Error::Bind {
        addr: e.addr,
        source: e.source,
    })
}
