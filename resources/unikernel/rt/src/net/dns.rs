//! Name resolution through the DNS server of `ip=` (smoltcp's DNS socket, which
//! retries on its own): the stack's side and, in a guest, the blocking [`resolve`].

use alloc::string::ToString;
use core::net::Ipv4Addr;

use smoltcp::socket::dns::{self, GetQueryResultError};
use smoltcp::wire::{DnsQueryType, IpAddress};

use super::{NetError, Stack};
use crate::virtio::Transport;

impl<T: Transport> Stack<T> {
    /// Starts resolving `name` to an IPv4 address, dropping any query before.
    pub fn start_query(&mut self, name: &str) -> Result<(), NetError> {
        self.config.ok_or(NetError::NoAddress)?;
        let handle = self.dns.ok_or(NetError::NoDnsServer)?;
        self.cancel_query();
        let socket = self.sockets.get_mut::<dns::Socket>(handle);
        let query = socket
            .start_query(self.iface.context(), name, DnsQueryType::A)
            .map_err(|_| NetError::BadName(name.to_string()))?;
        self.query = Some(query);
        Ok(())
    }

    /// The address `name` resolved to: `None` while the query goes on.
    pub fn query_result(&mut self, name: &str) -> Option<Result<Ipv4Addr, NetError>> {
        let (handle, query) = match (self.dns, self.query) {
            (Some(handle), Some(query)) => (handle, query),
            _ => return Some(Err(NetError::NoAnswer(name.to_string()))),
        };
        let result = self
            .sockets
            .get_mut::<dns::Socket>(handle)
            .get_query_result(query);
        if matches!(result, Err(GetQueryResultError::Pending)) {
            return None;
        }
        self.query = None;
        // An A query's answers are IPv4 addresses.
        let address = result.ok().and_then(|addresses| {
            addresses.first().map(|&address| match address {
                IpAddress::Ipv4(ip) => ip,
            })
        });
        Some(address.ok_or_else(|| NetError::NoAnswer(name.to_string())))
    }

    /// Drops the query in flight, if any.
    pub fn cancel_query(&mut self) {
        if let (Some(handle), Some(query)) = (self.dns, self.query.take()) {
            self.sockets
                .get_mut::<dns::Socket>(handle)
                .cancel_query(query);
        }
    }
}

/// Resolves `name` (a dotted IPv4 address stands for itself) through the DNS
/// server of `ip=`, waiting at most `timeout`.
#[cfg(not(any(test, feature = "hosted")))]
pub fn resolve(name: &str, timeout: core::time::Duration) -> Result<Ipv4Addr, NetError> {
    use crate::function::{net_until, with_stack};

    if let Ok(ip) = name.parse() {
        return Ok(ip);
    }
    with_stack(|net| net.start_query(name))?;
    let deadline = crate::time::deadline(timeout);
    match net_until(Some(deadline), |net| net.query_result(name))? {
        Some(result) => result,
        None => {
            with_stack(|net| {
                net.cancel_query();
                Ok(())
            })?;
            Err(NetError::DnsTimedOut(name.to_string()))
        }
    }
}
