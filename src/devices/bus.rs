//! Port-I/O and MMIO buses: which device answers a guest access at an address.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest reads and writes within its address window.
pub trait BusDevice: Send {
    /// Fills `data` with what the guest reads at `offset` into the window.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Takes a guest write of `data` at `offset` into the window.
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Two devices claim the same addresses: a layout bug.
    #[error("bus window {base:#x}+{len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
    /// A device window of no bytes: a layout bug.
    #[error("bus window at {0:#x} has zero length")]
    Empty(u64),
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Address windows mapped to devices; built once, then shared by all vCPUs.
#[derive(Default)]
pub struct Bus {
    windows: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::Empty(base));
        }
        let end = base.checked_add(len).ok_or(Error::Overlap { base, len })?;
        let before = self.windows.range(..end).next_back();
        if before.is_some_and(|(&b, &(l, _))| b + l > base) {
            return Err(Error::Overlap { base, len });
        }
        self.windows.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, device)) = self.windows.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, device))
    }

    /// Reads from the device at `addr`; unclaimed addresses read as zeros.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((offset, device)) => match device.lock() {
                Ok(mut d) => d.read(offset, data),
                Err(_) => data.fill(0),
            },
            None => data.fill(0),
        }
    }

    /// Writes to the device at `addr`; writes to unclaimed addresses are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((offset, device)) = self.find(addr) {
            if let Ok(mut d) = device.lock() {
                d.write(offset, data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last write and reads back its offset.
    struct Probe(Vec<(u64, Vec<u8>)>);

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).expect("small test offsets"));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let probe = Arc::new(Mutex::new(Probe(Vec::new())));
        let mut bus = Bus::default();
        bus.insert(0x3f8, 8, probe.clone()).unwrap();
        let mut data = [0xaa; 1];
        bus.read(0x3fd, &mut data);
        assert_eq!(data, [5]);
        bus.write(0x3f8, b"x");
        bus.write(0x400, &[1]);
        assert_eq!(probe.lock().unwrap().0, vec![(0, vec![b'x'])]);
        bus.read(0x3f7, &mut data);
        assert_eq!(data, [0]);
    }

    #[test]
    fn overlapping_windows_are_refused() {
        let probe = Arc::new(Mutex::new(Probe(Vec::new())));
        let mut bus = Bus::default();
        bus.insert(0x1000, 0x1000, probe.clone()).unwrap();
        assert!(bus.insert(0x1800, 0x1000, probe.clone()).is_err());
        assert!(bus.insert(0x800, 0x1000, probe.clone()).is_err());
        assert!(bus.insert(0x2000, 0x1000, probe.clone()).is_ok());
        assert!(bus.insert(0x0, 0x1000, probe.clone()).is_ok());
        assert_eq!(bus.insert(0x5000, 0, probe), Err(Error::Empty(0x5000)));
    }
}
