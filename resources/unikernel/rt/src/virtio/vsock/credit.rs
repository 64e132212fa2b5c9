//! The guest's side of stream flow control: how much it advertises. The counters
//! themselves are `ember_proto`'s, shared with ember's device.

/// Receive buffer advertised per connection: the most a peer may send beyond what
/// this side has consumed, and so the most one connection can make it hold.
pub const BUF_ALLOC: u32 = 1 << 20;
/// Consumed bytes that make an explicit CREDIT_UPDATE worthwhile: a quarter of the
/// buffer, so a sender streaming a large request never runs dry.
pub const UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

pub use ember_proto::credit::Credit;

/// A connection's counters, advertising [`BUF_ALLOC`].
pub const fn new() -> Credit {
    Credit::new(BUF_ALLOC, UPDATE_THRESHOLD)
}
