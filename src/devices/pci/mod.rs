//! A PCI root complex (`--enable-pci`): one segment, bus 0, function 0 of
//! each slot; a host bridge in slot 0 and a function per virtio device after
//! it. [`PciRoot`] answers configuration space (ECAM) as one device on the
//! MMIO bus; each function's BAR 0 is a device of its own there, below the
//! ECAM, so a BAR access takes only its function's lock.

pub mod config;
pub mod msix;

use std::sync::{Arc, Mutex};

use config::{ConfigSpace, Identity};

use crate::arch::x86_64::layout::{PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO_START};
use crate::devices::bus::BusDevice;

/// Slots on bus 0.
pub const SLOTS: usize = 32;
/// Bytes of configuration space per function in ECAM.
const FUNCTION_CONFIG_SIZE: u64 = 4096;

/// A PCI function, as the root complex reaches its configuration space.
pub trait PciFunction: Send {
    /// Its configuration header.
    fn config(&self) -> &ConfigSpace;
    /// A guest read of its configuration space; most functions only show
    /// their header.
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    /// A guest write to its configuration space.
    fn write_config(&mut self, offset: usize, data: &[u8]);
}

/// The host bridge in slot 0: a header and nothing else.
pub struct HostBridge(ConfigSpace);

impl Default for HostBridge {
    fn default() -> Self {
        HostBridge(ConfigSpace::new(&Identity {
            // Red Hat's PCIe host bridge id (QEMU's), which guests know.
            vendor: 0x1b36,
            device: 0x0008,
            revision: 0,
            class: 0x06_00_00,
            subsystem_vendor: 0,
            subsystem: 0,
        }))
    }
}

impl PciFunction for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.0
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data);
    }
}

type SharedFunction = Arc<Mutex<dyn PciFunction>>;

/// Bus 0: the functions by slot.
pub struct PciRoot {
    slots: Vec<SharedFunction>,
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// A bus with the host bridge in slot 0.
    pub fn new() -> Self {
        PciRoot {
            slots: vec![Arc::new(Mutex::new(HostBridge::default()))],
        }
    }

    /// The next free slot, if any is left.
    pub fn next_slot(&self) -> Option<u8> {
        u8::try_from(self.slots.len())
            .ok()
            .filter(|&s| usize::from(s) < SLOTS)
    }

    /// Puts `function` in the next slot.
    pub fn add(&mut self, function: SharedFunction) -> Option<u8> {
        let slot = self.next_slot()?;
        self.slots.push(function);
        Some(slot)
    }

    /// Where [`PciRoot`] sits on the MMIO bus: the ECAM.
    pub fn window() -> (u64, u64) {
        (PCI_ECAM_START, PCI_ECAM_SIZE)
    }

    /// Where the functions' BARs are: the memory window the host bridge
    /// decodes, below the ECAM.
    pub fn bar_window() -> (u64, u64) {
        (PCI_MMIO_START, PCI_ECAM_START - PCI_MMIO_START)
    }

    /// The function a configuration access at `offset` into ECAM reaches,
    /// and the offset in its configuration space: bus 0, function 0 only.
    fn config_target(&self, offset: u64) -> Option<(&SharedFunction, usize)> {
        let bus = offset >> 20;
        let slot = (offset >> 15) & 0x1f;
        let function = (offset >> 12) & 0x7;
        if bus != 0 || function != 0 {
            return None;
        }
        let register = usize::try_from(offset % FUNCTION_CONFIG_SIZE).ok()?;
        Some((self.slots.get(usize::try_from(slot).ok()?)?, register))
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.config_target(offset) {
            Some((function, register)) => match function.lock() {
                Ok(mut f) => f.read_config(register, data),
                Err(_) => data.fill(0xff),
            },
            // No function there: reads as all ones, as on real hardware.
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((function, register)) = self.config_target(offset) {
            if let Ok(mut f) = function.lock() {
                f.write_config(register, data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function that shows a header.
    struct Probe(ConfigSpace);

    impl PciFunction for Probe {
        fn config(&self) -> &ConfigSpace {
            &self.0
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) {
            self.0.write(offset, data);
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe(ConfigSpace::new(&Identity {
            vendor: 0x1af4,
            device: 0x1041,
            revision: 1,
            class: 0x02_00_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        }))))
    }

    fn ecam(slot: u64, function: u64, register: u64) -> u64 {
        slot << 15 | function << 12 | register
    }

    fn read32(root: &mut PciRoot, offset: u64) -> u32 {
        let mut b = [0; 4];
        root.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn configuration_space_reaches_each_slot_and_empty_ones_read_all_ones() {
        let mut root = PciRoot::new();
        assert_eq!(root.add(probe()), Some(1));
        assert_eq!(read32(&mut root, ecam(0, 0, 0)), 0x0008_1b36);
        assert_eq!(read32(&mut root, ecam(1, 0, 0)), 0x1041_1af4);
        assert_eq!(read32(&mut root, ecam(2, 0, 0)), u32::MAX);
        assert_eq!(read32(&mut root, ecam(1, 1, 0)), u32::MAX, "function 1");
        let mut eight = [0; 8];
        root.read(ecam(1, 0, 0), &mut eight);
        assert_eq!(u64::from_le_bytes(eight) & 0xffff_ffff, 0x1041_1af4);
        // Writes to nobody go nowhere.
        root.write(ecam(31, 7, 0x10), &[0xff; 8]);
    }

    #[test]
    fn slots_run_out_at_32() {
        let mut root = PciRoot::new();
        for slot in 1..SLOTS {
            assert_eq!(root.add(probe()), u8::try_from(slot).ok());
        }
        assert_eq!(root.add(probe()), None);
    }
}
