//! Stream flow control (virtio 1.2 §5.10.6.3): each side advertises its receive
//! buffer (`buf_alloc`) and the bytes it has consumed (`fwd_cnt`) in every header,
//! and never sends more than the peer has room for. Counters wrap at 2^32.

/// Receive buffer advertised per connection: the most a peer may send beyond what
/// this side has consumed, and so the most one connection can make it hold.
pub const BUF_ALLOC: u32 = 1 << 20;
/// Consumed bytes that make an explicit CREDIT_UPDATE worthwhile: a quarter of the
/// buffer, so a sender streaming a large request never runs dry.
pub const UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Both directions' counters for one connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Credit {
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
    /// Takes the peer's latest `buf_alloc` and `fwd_cnt` from a header it sent.
    pub fn peer_update(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Bytes the peer can take now. A peer claiming to have consumed more than was
    /// sent gets nothing rather than an overflowed window.
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
        self.fwd_cnt.wrapping_sub(self.advertised) >= UPDATE_THRESHOLD
    }

    /// The `(buf_alloc, fwd_cnt)` for an outgoing header, which tells the peer.
    pub fn advertise(&mut self) -> (u32, u32) {
        self.advertised = self.fwd_cnt;
        (BUF_ALLOC, self.fwd_cnt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_follows_the_peer() {
        let mut credit = Credit::default();
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
        let mut credit = Credit::default();
        credit.sent(u32::MAX - 10);
        credit.peer_update(100, u32::MAX - 10);
        credit.sent(50);
        assert_eq!(credit.window(), 50);
        credit.peer_update(100, 39);
        assert_eq!(credit.window(), 100);
    }

    #[test]
    fn updates_after_a_quarter_of_the_buffer() {
        let mut credit = Credit::default();
        assert_eq!(credit.advertise(), (BUF_ALLOC, 0));
        credit.consumed(UPDATE_THRESHOLD - 1);
        assert!(!credit.update_due());
        credit.consumed(1);
        assert!(credit.update_due());
        assert_eq!(credit.advertise(), (BUF_ALLOC, UPDATE_THRESHOLD));
        assert!(!credit.update_due());
    }
}
