//! Coalesced MMIO: guest writes that KVM queues in a ring shared with ember
//! instead of leaving guest mode for each one. It suits registers whose writes
//! only matter once the guest next exits (virtio-pci's common configuration,
//! all of it but the device status): a vCPU thread replays the ring onto the
//! MMIO bus after every exit, before the exit's own access, so a device sees
//! the guest's accesses in the order it made them.
//!
//! The ring belongs to the VM (every vCPU's mapping shows the same page), so
//! replays are serialized, and each replays at most one ring's worth: a guest
//! that keeps writing from another vCPU cannot hold a thread here. A full ring
//! makes KVM exit as usual, after the writes before it.

use std::os::fd::AsRawFd;
use std::ptr::{addr_of, addr_of_mut, NonNull};
use std::sync::atomic::{fence, Ordering};
use std::sync::Mutex;

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};

use crate::devices::bus::Bus;

/// Where KVM keeps the writes it held back.
pub struct HeldWrites {
    ring: NonNull<kvm_coalesced_mmio_ring>,
    page_size: usize,
    /// Entries in the ring: what fits in its page after the two indices.
    entries: u32,
    replaying: Mutex<()>,
}

// SAFETY: the ring is a shared mapping that lives as long as this value; the
// indices ember writes are only touched under `replaying`.
unsafe impl Send for HeldWrites {}
// SAFETY: as above.
unsafe impl Sync for HeldWrites {}

impl HeldWrites {
    /// Maps the VM's ring through one of its vCPUs.
    pub fn map(vcpu: &impl AsRawFd) -> std::io::Result<Self> {
        // SAFETY: sysconf has no memory effects.
        let page_size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::last_os_error())?;
        let offset = libc::off_t::try_from(page_size)
            .ok()
            .and_then(|size| size.checked_mul(libc::off_t::from(KVM_COALESCED_MMIO_PAGE_OFFSET)))
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: a new shared mapping of the page KVM keeps at this offset of
        // a vCPU's fd; no existing memory is touched.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ring = NonNull::new(addr.cast::<kvm_coalesced_mmio_ring>())
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EFAULT))?;
        let room = page_size - size_of::<kvm_coalesced_mmio_ring>();
        let entries = u32::try_from(room / size_of::<kvm_coalesced_mmio>())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        Ok(HeldWrites {
            ring,
            page_size,
            entries,
            replaying: Mutex::new(()),
        })
    }

    /// Hands every write waiting in the ring to `bus`, oldest first.
    pub fn replay(&self, bus: &Bus) {
        let Ok(_replaying) = self.replaying.lock() else {
            return;
        };
        let ring = self.ring.as_ptr();
        for _ in 0..self.entries {
            // SAFETY: `ring` is the live mapping; KVM moves `last`, ember `first`.
            let (first, last) = unsafe {
                (
                    addr_of!((*ring).first).read_volatile(),
                    addr_of!((*ring).last).read_volatile(),
                )
            };
            if first == last {
                return;
            }
            // The entry KVM published before moving `last`.
            fence(Ordering::Acquire);
            let index = first % self.entries;
            // SAFETY: `index` is below the number of entries the page holds.
            let entry = unsafe {
                addr_of!((*ring).coalesced_mmio)
                    .cast::<kvm_coalesced_mmio>()
                    .add(index as usize)
                    .read_volatile()
            };
            let len = entry.data.len().min(entry.len as usize);
            bus.write(entry.phys_addr, &entry.data[..len]);
            // The entry is read before KVM may reuse its slot.
            fence(Ordering::Release);
            // SAFETY: as above; only ember writes `first`.
            unsafe { addr_of_mut!((*ring).first).write_volatile((index + 1) % self.entries) };
        }
    }
}

impl Drop for HeldWrites {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` made, which nothing uses any more.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.page_size) };
    }
}
