//! TCP streams: the stack's side (non-blocking, by stream id) and, in a guest, the
//! function's blocking [`TcpStream`].

use alloc::vec;
use core::net::SocketAddrV4;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, RecvError, SocketBuffer, State};
use smoltcp::wire::IpEndpoint;

use super::{MMDS_ADDR, NetError, Stack};
use crate::virtio::Transport;

/// Each stream's receive buffer (the window it offers) and send buffer (what
/// may be in flight).
const STREAM_BUFFER: usize = 256 * 1024;
/// Dropped streams closing on their own at most; beyond that the oldest is reset.
const MAX_LINGERING: usize = 8;

impl<T: Transport> Stack<T> {
    /// Starts connecting to `peer`; returns the stream's id.
    pub fn connect(&mut self, peer: SocketAddrV4) -> Result<u64, NetError> {
        self.connect_sized(peer, STREAM_BUFFER)
    }

    /// As [`Stack::connect`], with receive and send buffers of `buffer` bytes
    /// each: small ones for short exchanges, since each page of a buffer is
    /// touched (and, in a VM restored from a snapshot, faulted in) when it is made.
    pub fn connect_sized(&mut self, peer: SocketAddrV4, buffer: usize) -> Result<u64, NetError> {
        let config = self.config.ok_or(NetError::NoAddress)?;
        let ip = *peer.ip();
        if !(config.on_link(ip) || ip == MMDS_ADDR || config.gateway.is_some()) {
            return Err(NetError::NoRoute(ip));
        }
        let buffers = (vec![0; buffer], vec![0; buffer]);
        let mut socket =
            tcp::Socket::new(SocketBuffer::new(buffers.0), SocketBuffer::new(buffers.1));
        // Writes go out at once: functions write whole requests, then wait.
        socket.set_nagle_enabled(false);
        let port = self.local_port();
        socket
            .connect(self.iface.context(), IpEndpoint::from(peer), port)
            .map_err(|_| NetError::Unaddressable(peer))?;
        let id = self.next_id;
        self.next_id += 1;
        self.streams.push((id, self.sockets.add(socket)));
        Ok(id)
    }

    fn handle(&self, id: u64) -> Option<SocketHandle> {
        self.streams.iter().find(|(i, _)| *i == id).map(|&(_, h)| h)
    }

    fn tcp(&mut self, id: u64) -> Result<&mut tcp::Socket<'static>, NetError> {
        let handle = self.handle(id).ok_or(NetError::Reset)?;
        Ok(self.sockets.get_mut(handle))
    }

    /// Whether stream `id` is connected: `None` while the handshake goes on,
    /// `Some(false)` once refused (or reset).
    pub fn connected(&mut self, id: u64) -> Option<bool> {
        match self.tcp(id).map(|s| s.state()) {
            Ok(State::SynSent | State::SynReceived) => None,
            Ok(State::Closed) | Err(_) => Some(false),
            Ok(_) => Some(true),
        }
    }

    /// Reads what has arrived into `buf`: `None` while nothing has, `Ok(0)` at the
    /// end of the stream (or for an empty `buf`).
    pub fn recv(&mut self, id: u64, buf: &mut [u8]) -> Option<Result<usize, NetError>> {
        let socket = match self.tcp(id) {
            Ok(socket) => socket,
            Err(err) => return Some(Err(err)),
        };
        match socket.recv_slice(buf) {
            Ok(0) if !buf.is_empty() => None,
            Ok(n) => Some(Ok(n)),
            Err(RecvError::Finished) => Some(Ok(0)),
            Err(RecvError::InvalidState) => Some(Err(NetError::Reset)),
        }
    }

    /// Queues what fits of `data`: how many bytes (0 while the send buffer is full).
    pub fn send(&mut self, id: u64, data: &[u8]) -> Result<usize, NetError> {
        let socket = self.tcp(id)?;
        socket.send_slice(data).map_err(|_| match socket.state() {
            State::Closed => NetError::Reset,
            _ => NetError::Closed,
        })
    }

    /// Closes the sending side: a FIN follows what is queued.
    pub fn shutdown(&mut self, id: u64) -> Result<(), NetError> {
        self.tcp(id)?.close();
        Ok(())
    }

    /// The function is done with stream `id`: it closes on its own (see
    /// [`Stack::linger`]), as Linux closes a socket: gracefully, unless data
    /// arrived that it never read (then with a reset).
    pub fn release(&mut self, id: u64) {
        let Some(at) = self.streams.iter().position(|(i, _)| *i == id) else {
            return;
        };
        let (_, handle) = self.streams.swap_remove(at);
        let unread = self.sockets.get::<tcp::Socket>(handle).recv_queue() > 0;
        self.linger(handle, unread);
    }

    /// Lets a socket nobody uses any more close on its own: gracefully, after what
    /// is queued, or with a reset. Closing in the background costs a timer while
    /// the peer takes its time; so only [`MAX_LINGERING`] linger, and the oldest
    /// beyond are reset.
    pub(super) fn linger(&mut self, handle: SocketHandle, reset: bool) {
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        if reset {
            socket.abort();
        } else {
            socket.close();
        }
        self.lingering.push_back(handle);
        if self.lingering.len() > MAX_LINGERING
            && let Some(oldest) = self.lingering.pop_front()
        {
            self.sockets.get_mut::<tcp::Socket>(oldest).abort();
            self.lingering.push_back(oldest);
        }
    }

    /// Resets stream `id` (a connection attempt that took too long).
    pub fn abort(&mut self, id: u64) {
        if let Ok(socket) = self.tcp(id) {
            socket.abort();
        }
        self.release(id);
    }
}

#[cfg(not(any(test, feature = "hosted")))]
pub use self::blocking::TcpStream;

#[cfg(not(any(test, feature = "hosted")))]
mod blocking {
    use core::net::{Ipv4Addr, SocketAddrV4};
    use core::time::Duration;

    use crate::function::{net_until, with_stack};
    use crate::net::NetError;
    use crate::time;

    /// A TCP connection of the function, closed when dropped (see
    /// [`Stack::release`](crate::net::Stack::release)). Each call serves other
    /// traffic while it waits; whatever a panicking function held is reset.
    #[derive(Debug)]
    pub struct TcpStream {
        id: u64,
        peer: SocketAddrV4,
        /// How long a read or write may wait for progress; forever if `None`.
        timeout: Option<Duration>,
    }

    impl TcpStream {
        /// Connects to `ip`:`port`, waiting at most `timeout` for it to accept.
        pub fn connect(ip: Ipv4Addr, port: u16, timeout: Duration) -> Result<TcpStream, NetError> {
            Self::connect_sized(ip, port, timeout, super::STREAM_BUFFER)
        }

        /// As [`TcpStream::connect`], with receive and send buffers of `buffer`
        /// bytes each (see [`Stack::connect_sized`](crate::net::Stack::connect_sized)).
        pub fn connect_sized(
            ip: Ipv4Addr,
            port: u16,
            timeout: Duration,
            buffer: usize,
        ) -> Result<TcpStream, NetError> {
            let peer = SocketAddrV4::new(ip, port);
            let id = with_stack(|net| net.connect_sized(peer, buffer))?;
            let stream = TcpStream {
                id,
                peer,
                timeout: None,
            };
            match net_until(Some(time::deadline(timeout)), |net| net.connected(id))? {
                Some(true) => Ok(stream),
                Some(false) => Err(NetError::Refused(peer)),
                None => {
                    with_stack(|net| {
                        net.abort(id);
                        Ok(())
                    })?;
                    Err(NetError::TimedOut("connect to", peer))
                }
            }
        }

        /// The address connected to.
        pub fn peer(&self) -> SocketAddrV4 {
            self.peer
        }

        /// Makes reads and writes fail once they wait longer than `timeout` for
        /// progress (`None`: they wait as long as it takes).
        pub fn set_timeout(&mut self, timeout: Option<Duration>) {
            self.timeout = timeout;
        }

        fn deadline(&self) -> Option<u64> {
            self.timeout.map(time::deadline)
        }

        /// Reads into `buf`, waiting for at least one byte; returns how many, 0 once
        /// the peer has closed its side.
        pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, NetError> {
            let id = self.id;
            match net_until(self.deadline(), |net| net.recv(id, buf))? {
                Some(read) => read,
                None => Err(NetError::TimedOut("read from", self.peer)),
            }
        }

        /// Sends all of `data`, returning once the stack has taken it (not once the
        /// peer has: [`TcpStream::shutdown`] and a read of the peer's close tell that).
        pub fn write_all(&mut self, mut data: &[u8]) -> Result<(), NetError> {
            let id = self.id;
            while !data.is_empty() {
                let sent = net_until(self.deadline(), |net| match net.send(id, data) {
                    Ok(0) => None,
                    sent => Some(sent),
                })?;
                let Some(sent) = sent else {
                    return Err(NetError::TimedOut("write to", self.peer));
                };
                data = &data[sent?..];
            }
            Ok(())
        }

        /// Closes the sending side (a FIN after what was written); reading goes on.
        pub fn shutdown(&mut self) -> Result<(), NetError> {
            with_stack(|net| net.shutdown(self.id))
        }
    }

    impl Drop for TcpStream {
        fn drop(&mut self) {
            // Without a stack there would be no stream to drop.
            let _ = with_stack(|net| {
                net.release(self.id);
                Ok(())
            });
        }
    }
}
