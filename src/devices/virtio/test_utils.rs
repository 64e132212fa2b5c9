//! What the virtio devices' unit tests share: guest memory, descriptors and
//! chains as a driver would post them, and what the device reported as used.

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

use super::narrow;
use crate::vstate::memory::GuestMemoryMmap;

/// The device may write the buffer.
pub const WRITE: u16 = narrow::to_u16(VRING_DESC_F_WRITE);
/// The chain goes on at the descriptor in `next`.
pub const NEXT: u16 = narrow::to_u16(VRING_DESC_F_NEXT);

/// `size` bytes of guest memory from address 0.
pub fn guest_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("test guest memory")
}

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// A chain of `(address, length, device-writable)` buffers on `queue`.
pub fn chain<'a>(
    queue: &'a MockSplitQueue<'a, GuestMemoryMmap>,
    buffers: &[(u64, u32, bool)],
) -> DescriptorChain<&'a GuestMemoryMmap> {
    let raw: Vec<RawDescriptor> = buffers
        .iter()
        .map(|&(addr, len, writable)| desc(addr, len, if writable { WRITE } else { 0 }, 0))
        .collect();
    queue.build_desc_chain(&raw).expect("a descriptor chain")
}

/// The lengths the device reported for the first `n` used buffers.
pub fn used_lens(queue: &MockSplitQueue<GuestMemoryMmap>, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| {
            let entry = queue.used().ring().ref_at(i);
            entry.expect("a used entry").load().len()
        })
        .collect()
}

/// The vsock packet header the device wrote at `addr`.
pub fn vsock_header_at(mem: &GuestMemoryMmap, addr: u64) -> ember_proto::vsock::Header {
    let mut bytes = [0u8; ember_proto::vsock::HEADER_LEN];
    mem.read_slice(&mut bytes, GuestAddress(addr))
        .expect("a header in guest memory");
    ember_proto::vsock::Header::decode(&bytes).expect("a whole header")
}
