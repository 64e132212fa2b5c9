//! The KVM VM: in-kernel interrupt controllers and timer, memory slots,
//! irqfds and ioeventfds.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM lacks a capability ember needs: {0:?}")]
    MissingCap(Cap),
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
}

impl Vm {
    /// Creates a VM over `mem` with an in-kernel PIC, IOAPIC and PIT.
    ///
    /// Memory goes in before the interrupt controllers: once they exist, every
    /// memory-slot change waits out an SRCU grace period they take part in,
    /// which costs milliseconds here instead of a tenth of one.
    pub fn new(mem: &GuestMemoryMmap) -> Result<Self, Error> {
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        if let Some(cap) = REQUIRED_CAPS.into_iter().find(|&c| !kvm.check_extension(c)) {
            return Err(Error::MissingCap(cap));
        }
        let fd = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("set the TSS address"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("set the identity map address"))?;
        let vm = Vm { kvm, fd };
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
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| Error::Kvm {
                    what: "map guest memory",
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
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

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
