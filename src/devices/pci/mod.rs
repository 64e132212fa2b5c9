//! A PCI root complex (`--enable-pci`): one segment, bus 0, function 0 of
//! each slot; a host bridge in slot 0 and a function per virtio device after
//! it. The guest reaches configuration space through ECAM and each
//! function's BAR 0 in a window below it; [`PciRoot`] answers both, as one
//! device on the MMIO bus (its vCPU-side lock, then the function's).

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

/// A PCI function, as the root complex reaches it.
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
    /// A guest read in its BAR 0, at `offset` into it.
    fn read_bar(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    /// A guest write in its BAR 0.
    fn write_bar(&mut self, _offset: u64, _data: &[u8]) {}
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

/// Bus 0: the functions by slot, and where each one's BAR sits.
pub struct PciRoot {
    slots: Vec<SharedFunction>,
    /// `(address, size)` of each slot's BAR 0; fixed, so looked up without
    /// the function's lock.
    bars: Vec<Option<(u64, u64)>>,
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
            bars: vec![None],
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
        let bar = function.lock().ok()?.config().memory_window();
        self.slots.push(function);
        self.bars.push(bar);
        Some(slot)
    }

    /// The window on the MMIO bus that [`PciRoot`] answers: the BARs, then ECAM.
    pub fn window() -> (u64, u64) {
        (
            PCI_MMIO_START,
            PCI_ECAM_START + PCI_ECAM_SIZE - PCI_MMIO_START,
        )
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

    /// The function whose BAR holds `address`, and the offset into the BAR.
    fn bar_target(&self, address: u64) -> Option<(&SharedFunction, u64)> {
        self.bars
            .iter()
            .zip(&self.slots)
            .find_map(|(bar, function)| {
                let (base, size) = (*bar)?;
                let offset = address.checked_sub(base)?;
                (offset < size).then_some((function, offset))
            })
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let address = PCI_MMIO_START + offset;
        match address.checked_sub(PCI_ECAM_START) {
            Some(ecam) => match self.config_target(ecam) {
                Some((function, register)) => match function.lock() {
                    Ok(mut f) => f.read_config(register, data),
                    Err(_) => data.fill(0xff),
                },
                // No function there: reads as all ones, as on real hardware.
                None => data.fill(0xff),
            },
            None => match self.bar_target(address) {
                Some((function, offset)) => match function.lock() {
                    Ok(mut f) => f.read_bar(offset, data),
                    Err(_) => data.fill(0),
                },
                None => data.fill(0),
            },
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let address = PCI_MMIO_START + offset;
        let target = match address.checked_sub(PCI_ECAM_START) {
            Some(ecam) => self
                .config_target(ecam)
                .map(|(f, register)| (f, Access::Config(register))),
            None => self
                .bar_target(address)
                .map(|(f, offset)| (f, Access::Bar(offset))),
        };
        if let Some((function, access)) = target {
            if let Ok(mut f) = function.lock() {
                match access {
                    Access::Config(register) => f.write_config(register, data),
                    Access::Bar(offset) => f.write_bar(offset, data),
                }
            }
        }
    }
}

enum Access {
    Config(usize),
    Bar(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function with a BAR that records what reaches it.
    struct Probe {
        config: ConfigSpace,
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl PciFunction for Probe {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) {
            self.config.write(offset, data);
        }
        fn read_bar(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset.to_le_bytes()[0]);
        }
        fn write_bar(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn probe(bar: u64) -> Arc<Mutex<Probe>> {
        let mut config = ConfigSpace::new(&Identity {
            vendor: 0x1af4,
            device: 0x1041,
            revision: 1,
            class: 0x02_00_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        config.set_bar0(bar, 0x8000);
        Arc::new(Mutex::new(Probe {
            config,
            writes: Vec::new(),
        }))
    }

    fn ecam(slot: u64, function: u64, register: u64) -> u64 {
        PCI_ECAM_START - PCI_MMIO_START + (slot << 15 | function << 12 | register)
    }

    fn read32(root: &mut PciRoot, offset: u64) -> u32 {
        let mut b = [0; 4];
        root.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn configuration_space_reaches_each_slot_and_empty_ones_read_all_ones() {
        let mut root = PciRoot::new();
        assert_eq!(root.add(probe(PCI_MMIO_START)), Some(1));
        assert_eq!(read32(&mut root, ecam(0, 0, 0)), 0x0008_1b36);
        assert_eq!(read32(&mut root, ecam(1, 0, 0)), 0x1041_1af4);
        assert_eq!(read32(&mut root, ecam(2, 0, 0)), u32::MAX);
        assert_eq!(read32(&mut root, ecam(1, 1, 0)), u32::MAX, "function 1");
        let mut eight = [0; 8];
        root.read(ecam(1, 0, 0), &mut eight);
        assert_eq!(u64::from_le_bytes(eight) & 0xffff_ffff, 0x1041_1af4);
    }

    #[test]
    fn bar_accesses_reach_the_function_at_their_offset() {
        let mut root = PciRoot::new();
        let function = probe(PCI_MMIO_START + 0x8000);
        root.add(function.clone());
        let mut b = [0; 1];
        root.read(0x8000 + 0x12, &mut b);
        assert_eq!(b, [0x12]);
        root.read(0x10, &mut b);
        assert_eq!(b, [0], "no BAR there");
        root.write(0x8000 + 0x3004, &[1, 0]);
        assert_eq!(function.lock().unwrap().writes, vec![(0x3004, vec![1, 0])]);
    }

    #[test]
    fn slots_run_out_at_32() {
        let mut root = PciRoot::new();
        for slot in 1..SLOTS {
            assert_eq!(root.add(probe(0)), u8::try_from(slot).ok());
        }
        assert_eq!(root.add(probe(0)), None);
    }
}
