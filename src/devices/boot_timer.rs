//! Firecracker's boot-timer pseudo device: the guest writes a magic byte when
//! it considers itself booted, and ember logs the time since InstanceStart.

use std::time::Instant;

use super::bus::BusDevice;

/// The byte a guest writes at offset 0 to say "booted".
const BOOT_COMPLETE: u8 = 123;

pub struct BootTimer {
    start: Instant,
}

impl BootTimer {
    pub fn new(start: Instant) -> Self {
        BootTimer { start }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data == [BOOT_COMPLETE] {
            let elapsed = self.start.elapsed();
            log::info!(
                "Guest-boot-time = {:>6} us {} ms",
                elapsed.as_micros(),
                elapsed.as_millis()
            );
        }
    }
}
