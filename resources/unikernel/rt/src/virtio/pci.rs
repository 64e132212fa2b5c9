//! The modern virtio-pci [`Transport`] (virtio 1.2 §4.1): functions on PCI bus 0,
//! found through ECAM, whose BAR 0 holds the structures the vendor capabilities
//! point at, and whose interrupts are MSI-X messages.
//!
//! Every access here is a VM exit, so the walk reads a capability in two 64-bit
//! reads, a function is opened (capabilities walked, MSI-X set up) only when its
//! driver comes up, and the scan of the bus stops at the first empty slot: ember
//! fills slots from 1 without gaps. All of a function's queues and its
//! configuration changes share MSI-X vector 0, which sends [`irq::MSI_VECTOR`]:
//! the runtime looks at every device after any interrupt anyway, and needs no
//! interrupt status read to acknowledge one.

use core::cell::Cell;
use core::ops::ControlFlow;
use core::ptr::{read_volatile, write_volatile};

use super::{Error, Transport};
use crate::irq;

/// The virtio vendor id and the first modern device id (plus the device type).
const VENDOR: u32 = 0x1af4;
const DEVICE_BASE: u32 = 0x1040;
/// Slots of bus 0 and the bytes of configuration space each takes in ECAM.
const SLOTS: usize = 32;
const SLOT_SHIFT: usize = 15;
const BAR0: usize = 0x10;
const CAPABILITIES: usize = 0x34;
/// Capability ids: MSI-X, and the vendor's, which virtio uses for its structures.
const CAP_MSIX: u8 = 0x11;
const CAP_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
/// The longest capability list walked (a configuration header holds no more).
const MAX_CAPABILITIES: usize = 48;
/// MSI-X message control: enable, function mask.
const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// The local APIC address an MSI goes to (destination APIC id 0).
const MSI_ADDRESS: u64 = 0xfee0_0000;
/// Queues a driver here sets up at most (the balloon's are the most, 5).
const MAX_QUEUES: usize = 8;

/// The common configuration's fields.
const DEVICE_FEATURE_SELECT: usize = 0x00;
const DEVICE_FEATURE: usize = 0x04;
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const CONFIG_MSIX_VECTOR: usize = 0x10;
const DEVICE_STATUS: usize = 0x14;
const CONFIG_GENERATION: usize = 0x15;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_MSIX_VECTOR: usize = 0x1a;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;

/// A virtio function on bus 0, not set up yet.
pub struct PciFunction {
    /// Its configuration space in ECAM.
    config: usize,
    /// Its virtio device type (2 = block, ...).
    pub device_id: u32,
}

/// The virtio functions on bus 0 of the ECAM at `ecam`: one configuration read
/// per slot, up to the first empty one.
///
/// # Safety
/// `ecam` must be the identity-mapped configuration space of bus 0 (32 slots of
/// 32 KiB), and each function found driven at most once.
pub unsafe fn functions(ecam: usize) -> impl Iterator<Item = PciFunction> {
    (1..SLOTS)
        .map_while(move |slot| {
            let config = ecam + (slot << SLOT_SHIFT);
            // SAFETY: the caller's contract makes this a slot's configuration space.
            let ids = unsafe { read::<u32>(config) };
            let (vendor, device) = (ids & 0xffff, ids >> 16);
            (vendor != 0xffff).then(|| {
                (vendor == VENDOR && device >= DEVICE_BASE).then(|| PciFunction {
                    config,
                    device_id: device - DEVICE_BASE,
                })
            })
        })
        .flatten()
}

/// Where a capability points in BAR 0.
fn in_bar(bar: u64, header: u64, offset: u32) -> Result<usize, Error> {
    let bar_index = header.to_le_bytes()[4];
    if bar_index != 0 {
        return Err(Error::Pci("a structure outside BAR 0"));
    }
    usize::try_from(bar + u64::from(offset)).map_err(|_| Error::Pci("a structure out of reach"))
}

/// This function's configuration space read at `offset`.
///
/// # Safety
/// `config` must be a function's configuration space found by [`functions`];
/// its reads have no side effects.
unsafe fn config_read<T: Copy>(config: usize, offset: usize) -> T {
    // SAFETY: the caller's contract.
    unsafe { read(config + offset) }
}

/// Hands each capability of the function at `config` (its offset and first
/// eight bytes) to `visit` until `visit` has what it needs.
///
/// # Safety
/// As for [`config_read`].
unsafe fn capabilities(config: usize, mut visit: impl FnMut(usize, u64) -> ControlFlow<()>) {
    // SAFETY: the caller's contract.
    let cfg32 = |offset: usize| unsafe { config_read::<u32>(config, offset) };
    let mut at = usize::from(cfg32(CAPABILITIES).to_le_bytes()[0] & !3);
    for _ in 0..MAX_CAPABILITIES {
        if at == 0 {
            return;
        }
        // Capabilities need only be 4-byte aligned (ember's are 8-byte
        // aligned, one read each).
        let header = if at.is_multiple_of(8) {
            // SAFETY: the caller's contract.
            unsafe { config_read::<u64>(config, at) }
        } else {
            u64::from(cfg32(at)) | u64::from(cfg32(at + 4)) << 32
        };
        if visit(at, header).is_break() {
            return;
        }
        at = usize::from(header.to_le_bytes()[1] & !3);
    }
}

impl PciFunction {
    /// Walks the capabilities, points MSI-X vector 0 at this CPU and turns MSI-X
    /// on: the transport the driver then sets the device up through. The ISR
    /// status is looked up only if the driver asks for it: MSI-X needs none.
    pub fn open(self) -> Result<PciTransport, Error> {
        let config = self.config;
        // SAFETY: `functions`' contract makes `config` this function's
        // configuration space.
        let cfg32 = |offset: usize| unsafe { config_read::<u32>(config, offset) };
        // SAFETY: as above.
        let bar = unsafe { config_read::<u64>(config, BAR0) } & !0xf;
        if bar == 0 || bar >= 1 << 32 {
            return Err(Error::Pci("BAR 0 outside the identity map"));
        }
        let (mut common, mut notify, mut device, mut msix) = (None, None, None, None);
        let mut fault = None;
        let mut place = |header: u64, offset: u32| {
            in_bar(bar, header, offset)
                .map_err(|e| fault = Some(e))
                .ok()
        };
        // SAFETY: as above.
        unsafe {
            capabilities(config, |at, header| {
                let [id, _, _, kind, ..] = header.to_le_bytes();
                match (id, kind) {
                    (CAP_MSIX, _) => msix = Some((at, header)),
                    (CAP_VENDOR, CFG_COMMON) => common = place(header, cfg32(at + 8)),
                    (CAP_VENDOR, CFG_NOTIFY) => {
                        let multiplier = cfg32(at + 16);
                        notify = place(header, cfg32(at + 8)).map(|n| (n, multiplier));
                    }
                    (CAP_VENDOR, CFG_DEVICE) => device = place(header, cfg32(at + 8)),
                    _ => {}
                }
                let complete =
                    msix.is_some() && common.is_some() && notify.is_some() && device.is_some();
                if complete {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
        };
        if let Some(fault) = fault {
            return Err(fault);
        }
        let (Some(common), Some((notify, multiplier)), Some(device), Some((msix_at, msix))) =
            (common, notify, device, msix)
        else {
            return Err(Error::Pci("a virtio capability is missing"));
        };
        let table = u32::from_le_bytes(msix.to_le_bytes()[4..].try_into().unwrap_or_default());
        if table & 7 != 0 {
            return Err(Error::Pci("the MSI-X table is outside BAR 0"));
        }
        let entry = usize::try_from(bar + u64::from(table))
            .map_err(|_| Error::Pci("the MSI-X table is out of reach"))?;
        // SAFETY: entry 0 of this function's MSI-X table, in its BAR: the message
        // (address, data) then the unmasked vector control.
        unsafe {
            write::<u64>(entry, MSI_ADDRESS);
            write::<u64>(entry + 8, u64::from(irq::MSI_VECTOR));
        }
        let control = u16::from_le_bytes([msix.to_le_bytes()[2], msix.to_le_bytes()[3]]);
        // SAFETY: the MSI-X capability's message control, in this function's
        // configuration space: MSI-X on, the function unmasked.
        unsafe {
            write::<u16>(
                config + msix_at + 2,
                (control | MSIX_ENABLE) & !MSIX_FUNCTION_MASK,
            )
        };
        Ok(PciTransport {
            config,
            bar,
            common,
            notify,
            multiplier: usize::try_from(multiplier).unwrap_or(0),
            isr: Cell::new(None),
            device,
            selected: Cell::new(0),
            notify_offsets: Default::default(),
        })
    }
}

/// A set-up virtio function's structures in BAR 0.
pub struct PciTransport {
    /// The function's configuration space and BAR 0, to find the ISR status.
    config: usize,
    bar: u64,
    common: usize,
    notify: usize,
    multiplier: usize,
    /// The ISR status, once a driver asked for it (absent where there is none).
    isr: Cell<Option<Option<usize>>>,
    device: usize,
    /// The queue selected last, so that setting one up needs no read of it.
    selected: Cell<u16>,
    /// Each queue's `queue_notify_off`, read when it was set up.
    notify_offsets: [Cell<u16>; MAX_QUEUES],
}

/// A volatile read of a `T` at an identity-mapped device address.
///
/// # Safety
/// `address` must be a register of a device this code drives (or configuration
/// space), aligned for `T`.
unsafe fn read<T: Copy>(address: usize) -> T {
    // SAFETY: the caller's contract.
    unsafe { read_volatile(address as *const T) }
}

/// A volatile write; see [`read`].
unsafe fn write<T: Copy>(address: usize, value: T) {
    // SAFETY: the caller's contract.
    unsafe { write_volatile(address as *mut T, value) }
}

impl PciTransport {
    /// Where the ISR status capability points, if the function has one.
    fn find_isr(&self) -> Option<usize> {
        let mut isr = None;
        // SAFETY: `open` was given this function's configuration space.
        unsafe {
            capabilities(self.config, |at, header| {
                let [id, _, _, kind, ..] = header.to_le_bytes();
                if (id, kind) != (CAP_VENDOR, CFG_ISR) {
                    return ControlFlow::Continue(());
                }
                let offset = config_read::<u32>(self.config, at + 8);
                isr = in_bar(self.bar, header, offset).ok();
                ControlFlow::Break(())
            })
        };
        isr
    }

    fn common_read<T: Copy>(&self, offset: usize) -> T {
        // SAFETY: `open` found the common configuration at `self.common`.
        unsafe { read(self.common + offset) }
    }

    fn common_write<T: Copy>(&self, offset: usize, value: T) {
        // SAFETY: as in `common_read`; writes only affect this device.
        unsafe { write(self.common + offset, value) }
    }
}

impl Transport for PciTransport {
    fn status(&self) -> u32 {
        u32::from(self.common_read::<u8>(DEVICE_STATUS))
    }

    fn set_status(&self, status: u32) {
        self.common_write::<u8>(DEVICE_STATUS, status.to_le_bytes()[0]);
    }

    fn device_features(&self) -> u64 {
        self.common_write::<u32>(DEVICE_FEATURE_SELECT, 0);
        let low = self.common_read::<u32>(DEVICE_FEATURE);
        self.common_write::<u32>(DEVICE_FEATURE_SELECT, 1);
        u64::from(self.common_read::<u32>(DEVICE_FEATURE)) << 32 | u64::from(low)
    }

    fn set_driver_features(&self, features: u64) {
        let [a, b, c, d, e, f, g, h] = features.to_le_bytes();
        self.common_write::<u32>(DRIVER_FEATURE_SELECT, 0);
        self.common_write(DRIVER_FEATURE, u32::from_le_bytes([a, b, c, d]));
        self.common_write::<u32>(DRIVER_FEATURE_SELECT, 1);
        self.common_write(DRIVER_FEATURE, u32::from_le_bytes([e, f, g, h]));
    }

    fn select_queue(&self, index: u32) {
        let index = u16::try_from(index).unwrap_or(u16::MAX);
        self.selected.set(index);
        self.common_write(QUEUE_SELECT, index);
    }

    fn queue_max_size(&self) -> u32 {
        u32::from(self.common_read::<u16>(QUEUE_SIZE))
    }

    fn queue_ready(&self) -> bool {
        self.common_read::<u16>(QUEUE_ENABLE) != 0
    }

    fn activate_queue(&self, size: u16, desc: u64, driver: u64, device: u64) {
        self.common_write(QUEUE_SIZE, size);
        self.common_write(QUEUE_DESC, desc);
        self.common_write(QUEUE_DRIVER, driver);
        self.common_write(QUEUE_DEVICE, device);
        self.common_write::<u16>(QUEUE_MSIX_VECTOR, 0);
        if let Some(slot) = self.notify_offsets.get(usize::from(self.selected.get())) {
            slot.set(self.common_read::<u16>(QUEUE_NOTIFY_OFF));
        }
        self.common_write::<u16>(QUEUE_ENABLE, 1);
    }

    fn notify(&self, index: u32) {
        let Some(offset) = usize::try_from(index)
            .ok()
            .and_then(|i| self.notify_offsets.get(i))
        else {
            return;
        };
        let address = self.notify + usize::from(offset.get()) * self.multiplier;
        // SAFETY: the queue's notification address in this device's notify structure.
        unsafe { write(address, u16::try_from(index).unwrap_or(u16::MAX)) };
    }

    fn take_interrupt(&self) -> u32 {
        let isr = self.isr.get().unwrap_or_else(|| {
            let found = self.find_isr();
            self.isr.set(Some(found));
            found
        });
        // SAFETY: the ISR status found in this function's BAR; reading it clears it.
        isr.map_or(0, |isr| u32::from(unsafe { read::<u8>(isr) }))
    }

    /// MSI-X interrupts need no acknowledgement: no exit at all.
    fn ack_interrupt(&self) -> u64 {
        0
    }

    fn enable_config_interrupt(&self) {
        self.common_write::<u16>(CONFIG_MSIX_VECTOR, 0);
    }

    /// Configuration changes interrupt from here on too (a reset forgot the
    /// vector).
    fn driver_ok(&self) {
        self.enable_config_interrupt();
        self.set_status(self.status() | super::STATUS_DRIVER_OK);
    }

    fn config_generation(&self) -> u32 {
        u32::from(self.common_read::<u8>(CONFIG_GENERATION))
    }

    fn config_u32(&self, offset: usize) -> u32 {
        // SAFETY: the device configuration `open` found.
        unsafe { read(self.device + offset) }
    }

    fn set_config_u32(&self, offset: usize, value: u32) {
        // SAFETY: as in `config_u32`.
        unsafe { write(self.device + offset, value) }
    }
}
