//! A PCI function's type 0 configuration header (PCI Local Bus 3.0 §6.1):
//! 256 bytes of registers, each bit writable by the guest or not, with a
//! capability list, and at most one BAR (a 64-bit memory BAR 0).
//!
//! ember places every BAR itself, inside the host bridge's window, and a
//! BAR does not move: the guest's sizing write of all ones reads back as the
//! size mask, any other write puts the address back, as in Firecracker. The function decodes its BAR whatever COMMAND says, so the
//! notify area's ioeventfds never need moving either.

/// Offsets of the header's registers.
pub const VENDOR_ID: usize = 0x00;
pub const COMMAND: usize = 0x04;
pub const REVISION: usize = 0x08;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const CAPABILITIES: usize = 0x34;

/// COMMAND bits a guest may set: memory space, bus master, INTx disable.
const COMMAND_WRITABLE: u32 = 0x0406;
/// STATUS (the high half of the COMMAND dword): a capability list follows.
const STATUS_CAPABILITIES: u32 = 0x0010 << 16;
/// A BAR's low bits: a 64-bit memory BAR.
const BAR_MEMORY_64: u32 = 0b100;
/// Where capabilities start: the first byte past the standard header.
const FIRST_CAPABILITY: usize = 0x40;
/// The header's size in dwords.
const DWORDS: usize = 64;

/// The identity a function shows in its header.
pub struct Identity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Class, subclass and programming interface.
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// A configuration header and which of its bits the guest may write.
#[derive(Clone)]
pub struct ConfigSpace {
    regs: [u32; DWORDS],
    writable: [u32; DWORDS],
    /// BAR 0: `(address, size)`.
    bar: Option<(u64, u64)>,
    /// Whether each BAR dword was last written all ones (it then reads as
    /// the size mask).
    bar_sizing: [bool; 2],
    /// Where the next capability goes.
    next_capability: usize,
    /// The pointer field that should point at the next capability.
    last_link: usize,
}

impl ConfigSpace {
    pub fn new(identity: &Identity) -> Self {
        let mut space = ConfigSpace {
            regs: [0; DWORDS],
            writable: [0; DWORDS],
            bar: None,
            bar_sizing: [false; 2],
            next_capability: FIRST_CAPABILITY,
            last_link: CAPABILITIES,
        };
        space.regs[VENDOR_ID / 4] = u32::from(identity.vendor) | u32::from(identity.device) << 16;
        space.writable[COMMAND / 4] = COMMAND_WRITABLE;
        space.regs[REVISION / 4] = u32::from(identity.revision) | identity.class << 8;
        // Cache line size and latency timer: plain storage a guest may set.
        space.writable[HEADER_TYPE / 4] = 0x0000_ffff;
        space.regs[SUBSYSTEM_VENDOR_ID / 4] =
            u32::from(identity.subsystem_vendor) | u32::from(identity.subsystem) << 16;
        space
    }

    /// Makes BAR 0 (with BAR 1 as its high half) a 64-bit memory BAR of
    /// `size` bytes (a power of two, at least 16) at `address`.
    pub fn set_bar0(&mut self, address: u64, size: u64) {
        self.bar = Some((address, size));
        self.bar_sizing = [false; 2];
    }

    /// BAR 0's window, `(address, size)`.
    pub fn memory_window(&self) -> Option<(u64, u64)> {
        self.bar
    }

    /// What BAR dword `half` (0 low, 1 high) reads as.
    fn bar_dword(&self, half: usize) -> u32 {
        let Some((address, size)) = self.bar else {
            return 0;
        };
        let value = if self.bar_sizing[half] {
            !(size - 1)
        } else {
            address
        };
        match half {
            0 => (value & 0xffff_fff0) as u32 | BAR_MEMORY_64,
            _ => (value >> 32) as u32,
        }
    }

    /// Appends a capability (its bytes after the id and next pointer), with
    /// `writable` masks for the dwords that hold it; returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u32]) -> usize {
        let offset = self.next_capability;
        let mut bytes = vec![id, 0];
        bytes.extend_from_slice(body);
        for (i, &byte) in bytes.iter().enumerate() {
            self.set_byte(offset + i, byte);
        }
        for (i, &mask) in writable.iter().enumerate() {
            if let Some(w) = self.writable.get_mut(offset / 4 + i) {
                *w |= mask;
            }
        }
        self.set_byte(self.last_link, u8::try_from(offset).unwrap_or(0));
        self.regs[COMMAND / 4] |= STATUS_CAPABILITIES;
        self.last_link = offset + 1;
        // 8-byte aligned, so a driver can read a capability's first eight
        // bytes in one access.
        self.next_capability = (offset + bytes.len()).next_multiple_of(8);
        offset
    }

    fn set_byte(&mut self, offset: usize, byte: u8) {
        if let Some(reg) = self.regs.get_mut(offset / 4) {
            let shift = (offset % 4) * 8;
            *reg = (*reg & !(0xff << shift)) | u32::from(byte) << shift;
        }
    }

    /// The dword at `offset` (rounded down); past the header, zero.
    pub fn dword(&self, offset: usize) -> u32 {
        match (offset / 4).checked_sub(BAR0 / 4) {
            Some(half @ 0..=1) => self.bar_dword(half),
            _ => self.regs.get(offset / 4).copied().unwrap_or(0),
        }
    }

    /// Replaces the dword at `offset` whatever the guest may write: the
    /// function's own registers (an MSI-X capability's state, a window's data).
    pub fn set_dword(&mut self, offset: usize, value: u32) {
        if let Some(reg) = self.regs.get_mut(offset / 4) {
            *reg = value;
        }
    }

    /// A guest read of `data.len()` bytes at `offset`, any width or alignment.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i);
            *byte = self.dword(at).to_le_bytes()[at % 4];
        }
    }

    /// A guest write: only the writable bits of each byte change.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        if let Some(half @ 0..=1) = (offset / 4).checked_sub(BAR0 / 4) {
            // Sizing is a whole-dword write of all ones; anything else is a
            // move, which ember does not make.
            self.bar_sizing[half] = offset.is_multiple_of(4) && data == [0xff; 4];
            return;
        }
        for (i, &byte) in data.iter().enumerate() {
            let at = offset.saturating_add(i);
            let (Some(reg), Some(&mask)) = (self.regs.get_mut(at / 4), self.writable.get(at / 4))
            else {
                return;
            };
            let shift = (at % 4) * 8;
            let mask = (mask >> shift) & 0xff;
            let old = (*reg >> shift) & 0xff;
            let new = (old & !mask) | (u32::from(byte) & mask);
            *reg = (*reg & !(0xff << shift)) | new << shift;
        }
    }

    /// The registers, for a snapshot.
    pub fn save(&self) -> Vec<u32> {
        self.regs.to_vec()
    }

    /// Takes back saved registers; only the bits a guest could have written
    /// (and the function's own, `own` masks per dword) come from `saved`.
    pub fn restore(&mut self, saved: &[u32], own: &[(usize, u32)]) -> Result<(), &'static str> {
        if saved.len() != DWORDS {
            return Err("a PCI configuration header is not 256 bytes");
        }
        for (i, &value) in saved.iter().enumerate() {
            let own_mask = own
                .iter()
                .filter(|(offset, _)| offset / 4 == i)
                .fold(0, |m, (_, mask)| m | mask);
            let mask = self.writable[i] | own_mask;
            self.regs[i] = (self.regs[i] & !mask) | (value & mask);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// COMMAND: memory space decoding.
    const COMMAND_MEMORY: u32 = 0x0002;

    fn space() -> ConfigSpace {
        ConfigSpace::new(&Identity {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 0x018000,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        })
    }

    fn read32(space: &ConfigSpace, offset: usize) -> u32 {
        let mut b = [0; 4];
        space.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_is_read_only_and_reads_at_any_width() {
        let mut s = space();
        assert_eq!(read32(&s, 0), 0x1042_1af4);
        s.write(0, &[0xff; 4]);
        assert_eq!(read32(&s, 0), 0x1042_1af4);
        let mut word = [0; 2];
        s.read(2, &mut word);
        assert_eq!(u16::from_le_bytes(word), 0x1042);
        assert_eq!(read32(&s, 8) >> 8, 0x018000);
        // Past the header and past the end of everything: zeros.
        assert_eq!(read32(&s, 0x100), 0);
        assert_eq!(read32(&s, usize::MAX - 1), 0);
    }

    #[test]
    fn a_bar_sizes_but_does_not_move() {
        let mut s = space();
        s.set_bar0(0xd100_0000, 0x8000);
        assert_eq!(read32(&s, BAR0), 0xd100_0004, "the address, 64-bit type");
        assert_eq!(read32(&s, BAR0 + 4), 0);
        s.write(BAR0, &u32::MAX.to_le_bytes());
        s.write(BAR0 + 4, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&s, BAR0), 0xffff_8004, "size mask, 64-bit type");
        assert_eq!(read32(&s, BAR0 + 4), u32::MAX);
        s.write(BAR0, &0xe000_8000u32.to_le_bytes());
        s.write(BAR0 + 4, &1u32.to_le_bytes());
        assert_eq!(
            read32(&s, BAR0),
            0xd100_0004,
            "a move puts the address back"
        );
        assert_eq!(read32(&s, BAR0 + 4), 0);
        s.write(COMMAND, &0u32.to_le_bytes());
        assert_eq!(s.memory_window(), Some((0xd100_0000, 0x8000)));
        // Odd widths and offsets into the BAR never size or move it.
        s.write(BAR0 + 1, &[0xff; 3]);
        s.write(BAR0, &[0xff; 2]);
        assert_eq!(read32(&s, BAR0), 0xd100_0004);
    }

    #[test]
    fn capabilities_chain_from_the_header() {
        let mut s = space();
        let first = s.add_capability(0x11, &[1, 2], &[0xc000_0000]);
        let second = s.add_capability(0x09, &[16, 1, 0, 0], &[]);
        assert_eq!(first, 0x40);
        assert_eq!(second, 0x48);
        assert_eq!(
            read32(&s, COMMAND) & STATUS_CAPABILITIES,
            STATUS_CAPABILITIES
        );
        assert_eq!(read32(&s, CAPABILITIES) & 0xff, 0x40);
        assert_eq!(read32(&s, 0x40), 0x0201_4811);
        assert_eq!(
            read32(&s, 0x48) & 0xff00,
            0,
            "the last capability ends the list"
        );
        s.write(0x40, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&s, 0x40), 0xc201_4811, "only the writable bits");
    }

    #[test]
    fn a_restore_takes_only_what_a_guest_or_the_function_could_set() {
        let mut s = space();
        let mut saved = s.save();
        saved[0] = 0xdead_beef;
        saved[COMMAND / 4] = COMMAND_MEMORY | 0xffff_0000;
        s.restore(&saved, &[]).unwrap();
        assert_eq!(read32(&s, 0), 0x1042_1af4);
        assert_eq!(read32(&s, COMMAND), COMMAND_MEMORY);
        assert!(s.restore(&saved[1..], &[]).is_err());
    }
}
