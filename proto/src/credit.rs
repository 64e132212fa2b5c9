//! Stream flow control (virtio 1.2 §5.10.6.3): each side advertises its
//! receive buffer (`buf_alloc`) and the bytes it has consumed (`fwd_cnt`) in
//! every header, and never sends more than the peer has room for. Counters
//! wrap at 2^32.

/// Both directions' counters for one connection.
#[derive(Clone, Copy, Debug)]
pub struct Credit {
    /// The receive buffer this side advertises: the most the peer may send
    /// beyond what this side consumed.
    buf_alloc: u32,
    /// Consumed bytes that make an explicit CREDIT_UPDATE worthwhile.
    update_threshold: u32,
    /// Bytes received and consumed.
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the peer.
    advertised: u32,
    /// Bytes sent.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
}

impl Credit {
    /// A connection that advertises `buf_alloc` and tells the peer of freed
    /// room once `update_threshold` bytes were consumed unannounced.
    pub const fn new(buf_alloc: u32, update_threshold: u32) -> Self {
        Credit {
            buf_alloc,
            update_threshold,
            fwd_cnt: 0,
            advertised: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        }
    }

    /// Takes the peer's latest `buf_alloc` and `fwd_cnt` from a header it sent.
    pub fn peer_update(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Bytes the peer can take now. A peer claiming to have consumed more
    /// than was sent gets nothing rather than an overflowed window.
    pub fn window(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Records `n` payload bytes sent to the peer.
    pub fn sent(&mut self, n: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(n);
    }

    /// Records `n` received bytes consumed.
    pub fn consumed(&mut self, n: u32) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n);
    }

    /// Whether enough was consumed since the last advertisement to tell the peer.
    pub fn update_due(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.advertised) >= self.update_threshold
    }

    /// The `(buf_alloc, fwd_cnt)` for an outgoing header, which tells the peer.
    pub fn advertise(&mut self) -> (u32, u32) {
        self.advertised = self.fwd_cnt;
        (self.buf_alloc, self.fwd_cnt)
    }

    /// The receive buffer this side advertises.
    pub fn buf_alloc(&self) -> u32 {
        self.buf_alloc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_follows_the_peer_and_never_overflows() {
        let mut credit = Credit::new(1000, 250);
        assert_eq!(credit.window(), 0);
        credit.peer_update(1000, 0);
        assert_eq!(credit.window(), 1000);
        credit.sent(600);
        assert_eq!(credit.window(), 400);
        credit.sent(400);
        assert_eq!(credit.window(), 0);
        credit.peer_update(1000, 700);
        assert_eq!(credit.window(), 700);
        // A peer that shrinks its buffer below what is in flight gets nothing more.
        credit.peer_update(200, 700);
        assert_eq!(credit.window(), 0);
        // So does one that acknowledges bytes never sent.
        credit.peer_update(1000, 5000);
        assert_eq!(credit.window(), 0);
    }

    #[test]
    fn counters_wrap() {
        let mut credit = Credit::new(1000, 250);
        credit.sent(u32::MAX - 10);
        credit.peer_update(1000, u32::MAX - 10);
        credit.sent(100);
        assert_eq!(credit.window(), 900);
    }

    #[test]
    fn an_update_is_due_after_the_threshold_and_not_after_advertising() {
        let mut credit = Credit::new(1000, 250);
        credit.consumed(249);
        assert!(!credit.update_due());
        credit.consumed(1);
        assert!(credit.update_due());
        assert_eq!(credit.advertise(), (1000, 250));
        assert!(!credit.update_due());
        assert_eq!(credit.buf_alloc(), 1000);
    }
}
