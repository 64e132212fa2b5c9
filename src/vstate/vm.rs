//! The KVM VM: in-kernel interrupt controllers and timer, memory slots,
//! irqfds and ioeventfds.

use crate::vstate::memory::GuestMemoryMmap;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_clock_data, kvm_irq_routing_entry, kvm_irqchip, kvm_pmu_event_filter,
    kvm_userspace_memory_region, KvmIrqRouting, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PMU_EVENT_DENY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::ioctl::ioctl_with_ref;

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No /dev/kvm, or no permission to open it.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    /// A KVM without a capability ember relies on (irqchip, ioeventfd, ...).
    #[error("KVM lacks a capability ember needs: {0:?}")]
    MissingCap(Cap),
    /// More MSI vectors than KVM routes.
    #[error("too many MSI-X vectors: KVM routes {MAX_GSIS} interrupts")]
    OutOfGsis,
    /// The routing table could not be built.
    #[error("cannot build the interrupt routing table")]
    RoutingTable,
    /// A thread panicked while holding the routing table.
    #[error("the interrupt routing table's lock is poisoned")]
    Poisoned,
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
    fd: Arc<VmFd>,
    track_dirty_pages: bool,
    routes: Arc<GsiRoutes>,
}

/// The VM-wide state a snapshot holds: interrupt controllers and kvmclock.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    pic_master: kvm_irqchip,
    pic_slave: kvm_irqchip,
    ioapic: kvm_irqchip,
    clock: kvm_clock_data,
}

impl Vm {
    /// Creates a VM over `mem` with an in-kernel PIC and IOAPIC; with
    /// `track_dirty_pages`, KVM logs the pages the guest writes.
    ///
    /// There is no PIT (as in Cloud Hypervisor, or QEMU's microvm with
    /// `pit=off`): guests keep time with kvmclock, the TSC (whose frequency
    /// CPUID gives) and the LAPIC's TSC-deadline timer, so Linux never needs
    /// the PIT. KVM's in-kernel PIT costs a kernel thread per VM, and its
    /// teardown waits out two SRCU grace periods back to back, the second a
    /// slow one (12-16 ms here): that wait was most of every VM's exit.
    /// The PIT's ports read as zero, like any port no device claims.
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
        let fd = Arc::new(fd);
        let vm = Vm {
            kvm,
            fd: fd.clone(),
            track_dirty_pages,
            routes: Arc::new(GsiRoutes::new(fd)),
        };
        vm.register_memory(mem)?;
        let fd = &vm.fd;
        fd.create_irq_chip()
            .map_err(kvm_err("create the irqchip"))?;
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
            clock: self.fd.get_clock().map_err(kvm_err("read kvmclock"))?,
        })
    }

    /// Puts back a saved VM state. kvmclock resumes where it stopped, or with
    /// `clock_realtime` moves on by the wall-clock time since the snapshot.
    pub fn restore_state(&self, state: &VmState, clock_realtime: bool) -> Result<(), Error> {
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

    /// The VM's interrupt routing, for MSI-X devices.
    pub fn gsi_routes(&self) -> &Arc<GsiRoutes> {
        &self.routes
    }

    /// Makes this VM the one [`retire_replaced_buses`] acts on: called once
    /// its vCPUs run.
    pub fn mark_started(&self) {
        STARTED_VM.store(self.fd.as_raw_fd(), Ordering::Release);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let fd = self.fd.as_raw_fd();
        let _ = STARTED_VM.compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The started VM's fd, or -1: what [`retire_replaced_buses`] acts on as the
/// process ends, from a signal handler too.
static STARTED_VM: AtomicI32 = AtomicI32::new(-1);

/// Has KVM free now the copies of its I/O buses that wiring the started VM's
/// devices replaced, so that destroying it as the process ends need not wait
/// for them. Async-signal-safe: one ioctl.
///
/// Each device on a KVM I/O bus (the PIC and IOAPIC, every ioeventfd)
/// replaces the bus, and KVM frees the copy it replaced after a normal SRCU
/// grace period, which takes 12-16 ms here. Destroying the VM waits for those
/// (`srcu_barrier` in `kvm_destroy_vm`), so a VM that ends sooner (a guest
/// that resets at once, a function stopped after one call) would take that
/// long to exit. An expedited grace period ends them within a tick, and
/// `KVM_SET_PMU_EVENT_FILTER` waits for one after it swaps the filter; an
/// empty deny list filters nothing, so the guest sees no change. Long after
/// the start it costs one short grace period. A KVM that refuses the call
/// only leaves the exit as slow as before.
pub fn retire_replaced_buses() {
    let fd = STARTED_VM.load(Ordering::Acquire);
    if fd < 0 {
        return;
    }
    let no_filter = kvm_pmu_event_filter {
        action: KVM_PMU_EVENT_DENY,
        ..Default::default()
    };
    // SAFETY: KVM reads one `kvm_pmu_event_filter` (with `nevents` 0, no
    // events follow it) from a live reference; `fd` is the started VM's, which
    // stays open until the process ends.
    let _ = unsafe { ioctl_with_ref(&fd, KVM_SET_PMU_EVENT_FILTER(), &no_filter) };
}

vmm_sys_util::ioctl_iow_nr!(
    KVM_SET_PMU_EVENT_FILTER,
    kvm_bindings::KVMIO,
    0xb2,
    kvm_pmu_event_filter
);

/// An MSI: the address a vector writes to and the data it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// GSIs of the in-kernel IOAPIC; MSI vectors get the ones after.
const IOAPIC_GSIS: u32 = 24;
/// How many routes KVM takes (`KVM_MAX_IRQ_ROUTES`).
const MAX_GSIS: u32 = 4096;

/// The VM's GSI routing table (`KVM_SET_GSI_ROUTING`), for MSI vectors.
///
/// KVM routes GSIs 0-23 to the PIC and IOAPIC until the first table is set,
/// and a table replaces everything, so each one carries those routes again
/// before the MSI ones. A VM without MSI-X devices never sets one.
pub struct GsiRoutes {
    vm: Arc<VmFd>,
    next_gsi: Mutex<u32>,
    msi: Mutex<BTreeMap<u32, MsiMessage>>,
}

impl GsiRoutes {
    fn new(vm: Arc<VmFd>) -> Self {
        GsiRoutes {
            vm,
            next_gsi: Mutex::new(IOAPIC_GSIS),
            msi: Mutex::default(),
        }
    }

    /// `count` fresh GSIs for MSI vectors; the first of them. A boot and its
    /// restores allocate in the same order, so a device gets the same GSIs.
    pub fn allocate(&self, count: u16) -> Result<u32, Error> {
        let mut next = self.next_gsi.lock().map_err(|_| Error::Poisoned)?;
        let first = *next;
        let end = first + u32::from(count);
        if end > MAX_GSIS {
            return Err(Error::OutOfGsis);
        }
        *next = end;
        Ok(first)
    }

    /// Routes each GSI to its message (or nowhere), in one table update; on
    /// failure the routes stay as they were.
    pub fn update(&self, changes: &[(u32, Option<MsiMessage>)]) -> Result<(), Error> {
        let mut msi = self.msi.lock().map_err(|_| Error::Poisoned)?;
        let mut next = msi.clone();
        for &(gsi, message) in changes {
            match message {
                Some(message) => next.insert(gsi, message),
                None => next.remove(&gsi),
            };
        }
        let mut table = KvmIrqRouting::new(0).map_err(|_| Error::RoutingTable)?;
        for entry in legacy_routes().chain(next.iter().map(|(&gsi, m)| msi_route(gsi, m))) {
            table.push(entry).map_err(|_| Error::RoutingTable)?;
        }
        self.vm
            .set_gsi_routing(&table)
            .map_err(kvm_err("set the interrupt routing"))?;
        *msi = next;
        Ok(())
    }
}

/// KVM's default routes: GSIs 0-15 to the PICs and the IOAPIC, 16-23 to
/// the IOAPIC.
fn legacy_routes() -> impl Iterator<Item = kvm_irq_routing_entry> {
    let irqchip = |gsi: u32, chip: u32, pin: u32| {
        let mut entry = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        entry.u.irqchip.irqchip = chip;
        entry.u.irqchip.pin = pin;
        entry
    };
    (0..IOAPIC_GSIS).flat_map(move |gsi| {
        let pic = match gsi {
            0..8 => Some(irqchip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi)),
            8..16 => Some(irqchip(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8)),
            _ => None,
        };
        pic.into_iter()
            .chain([irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi)])
    })
}

fn msi_route(gsi: u32, message: &MsiMessage) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    let [a, b, c, d, e, f, g, h] = message.address.to_le_bytes();
    entry.u.msi.address_lo = u32::from_le_bytes([a, b, c, d]);
    entry.u.msi.address_hi = u32::from_le_bytes([e, f, g, h]);
    entry.u.msi.data = message.data;
    entry
}
