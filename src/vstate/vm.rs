//! The KVM VM: in-kernel interrupt controllers and timer, memory slots,
//! irqfds and ioeventfds.

use crate::vstate::memory::GuestMemoryMmap;
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No /dev/kvm, or no permission to open it.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    /// A KVM without a capability ember relies on (irqchip, ioeventfd, ...).
    #[error("KVM lacks a capability ember needs: {0:?}")]
    MissingCap(Cap),
    /// A VM ioctl failed: `what` it was for.
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// Capabilities without which ember cannot run a guest.
const REQUIRED_CAPS: [Cap; 5] = [
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::ImmediateExit,
];

pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    track_dirty_pages: bool,
}

/// The VM-wide state a snapshot holds: interrupt controllers, PIT and kvmclock.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    pic_master: kvm_irqchip,
    pic_slave: kvm_irqchip,
    ioapic: kvm_irqchip,
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
}

impl Vm {
    /// Creates a VM over `mem` with an in-kernel PIC, IOAPIC and PIT; with
    /// `track_dirty_pages`, KVM logs the pages the guest writes.
    ///
    /// Memory goes in before the interrupt controllers: once they exist, every
    /// memory-slot change waits out an SRCU grace period they take part in,
    /// which costs milliseconds here instead of a tenth of one.
    pub fn new(mem: &GuestMemoryMmap, track_dirty_pages: bool) -> Result<Self, Error> {
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        if let Some(cap) = REQUIRED_CAPS.into_iter().find(|&c| !kvm.check_extension(c)) {
            return Err(Error::MissingCap(cap));
        }
        let fd = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("set the TSS address"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("set the identity map address"))?;
        let vm = Vm {
            kvm,
            fd,
            track_dirty_pages,
        };
        vm.register_memory(mem)?;
        let fd = &vm.fd;
        fd.create_irq_chip()
            .map_err(kvm_err("create the irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
        Ok(vm)
    }

    /// Gives every region of `mem` to the guest as one memory slot each.
    fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), Error> {
        for (slot, region) in (0u32..).zip(mem.iter()) {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| Error::Kvm {
                    what: "map guest memory",
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let region = kvm_userspace_memory_region {
                slot,
                flags: if self.track_dirty_pages {
                    KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range is a live mapping owned by `mem`, which the
            // VMM keeps alive for as long as the VM runs.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(kvm_err("register guest memory"))?;
        }
        Ok(())
    }

    pub fn tracks_dirty_pages(&self) -> bool {
        self.track_dirty_pages
    }

    /// Per memory slot, the pages the guest wrote since the last call (one bit
    /// per page); reading clears them.
    pub fn take_dirty_log(&self, mem: &GuestMemoryMmap) -> Result<Vec<Vec<u64>>, Error> {
        (0u32..)
            .zip(mem.iter())
            .map(|(slot, region)| {
                self.fd
                    .get_dirty_log(slot, std::ops::Deref::deref(region).size())
                    .map_err(kvm_err("read the dirty-page log"))
            })
            .collect()
    }

    pub fn save_state(&self) -> Result<VmState, Error> {
        let chip = |chip_id| -> Result<kvm_irqchip, Error> {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(kvm_err("read the irqchip"))?;
            Ok(chip)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(kvm_err("read the PIT"))?,
            clock: self.fd.get_clock().map_err(kvm_err("read kvmclock"))?,
        })
    }

    /// Puts back a saved VM state. kvmclock resumes where it stopped, or with
    /// `clock_realtime` moves on by the wall-clock time since the snapshot.
    pub fn restore_state(&self, state: &VmState, clock_realtime: bool) -> Result<(), Error> {
        self.fd
            .set_pit2(&state.pit)
            .map_err(kvm_err("restore the PIT"))?;
        let mut clock = state.clock;
        clock.flags = if clock_realtime {
            state.clock.flags & KVM_CLOCK_REALTIME
        } else {
            0
        };
        self.fd
            .set_clock(&clock)
            .map_err(kvm_err("restore kvmclock"))?;
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd
                .set_irqchip(chip)
                .map_err(kvm_err("restore the irqchip"))?;
        }
        Ok(())
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
