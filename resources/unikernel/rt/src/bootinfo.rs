//! What the VMM tells the guest at boot: command line and memory map, from either the
//! Linux `boot_params` zero page or the PVH `hvm_start_info`.

use core::fmt;

/// How the guest was entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// 64-bit Linux boot protocol: ELF entry point, `rsi` = `boot_params`.
    Linux64,
    /// Xen PVH: 32-bit entry from the ELF note, `ebx` = `hvm_start_info`.
    Pvh,
}

impl Protocol {
    /// Short name, as the test guest prints it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Linux64 => "linux64",
            Protocol::Pvh => "pvh",
        }
    }
}

/// The boot structure was not what its protocol promises.
#[derive(Debug, PartialEq, Eq)]
pub enum BootError {
    /// `hvm_start_info.magic` was not 0x336ec578.
    BadPvhMagic(u32),
    /// An address (of the structure, or in it) that no pointer can hold.
    BadAddress(u64),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::BadPvhMagic(magic) => write!(f, "bad pvh magic {magic:#x}"),
            BootError::BadAddress(addr) => write!(f, "address {addr:#x} out of reach"),
        }
    }
}

/// One memory-map entry (e820 or PVH memmap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRegion {
    pub start: u64,
    pub size: u64,
    /// 1 = usable RAM, 2 = reserved, 3 = ACPI, ... (same numbering in both protocols).
    pub kind: u32,
}

/// The VMM's memory map, read in place.
#[derive(Clone, Copy, Debug)]
pub struct MemoryMap {
    base: usize,
    count: usize,
    /// 20 bytes per e820 entry, 24 per PVH entry; the fields sit at the same offsets.
    stride: usize,
}

impl MemoryMap {
    /// The entries in the VMM's order.
    pub fn iter(&self) -> impl Iterator<Item = MemRegion> + '_ {
        (0..self.count).map(move |i| {
            let entry = self.base + i * self.stride;
            // SAFETY: `base`/`count` come from the VMM's boot structure, and the
            // caller of `BootInfo::parse` guaranteed they describe readable entries.
            unsafe {
                MemRegion {
                    start: read::<u64>(entry),
                    size: read::<u64>(entry + 8),
                    kind: read::<u32>(entry + 16),
                }
            }
        })
    }
}

/// Everything the runtime learned at boot.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    pub protocol: Protocol,
    /// The command line without its NUL terminator.
    pub cmdline: &'static [u8],
    pub memory: MemoryMap,
}

/// Longest command line accepted; a missing NUL cannot run past it.
const MAX_CMDLINE: usize = 64 * 1024;
/// `boot_params.e820_table` holds at most this many entries.
const MAX_E820: usize = 128;
/// Bound on PVH memmap entries, so a corrupt count cannot walk all of memory.
const MAX_PVH_MEMMAP: usize = 1024;
const PVH_MAGIC: u32 = 0x336e_c578;

impl BootInfo {
    /// Reads the boot structure at `addr`.
    ///
    /// # Safety
    /// `addr` must be the (identity-mapped) `boot_params` or `hvm_start_info` the VMM
    /// passed for `protocol`, and the command line and memory map it points to must be
    /// readable and stay unchanged for the rest of the run.
    pub unsafe fn parse(protocol: Protocol, addr: u64) -> Result<BootInfo, BootError> {
        let addr = pointer(addr)?;
        // SAFETY: the caller guarantees `addr` is the protocol's boot structure, so
        // the fixed offsets below are inside it.
        unsafe {
            let (cmdline, memory) = match protocol {
                Protocol::Linux64 => {
                    let ptr = u64::from(read::<u32>(addr + 0x228))
                        | u64::from(read::<u32>(addr + 0xc8)) << 32;
                    let memory = MemoryMap {
                        base: addr + 0x2d0,
                        count: usize::from(read::<u8>(addr + 0x1e8)).min(MAX_E820),
                        stride: 20,
                    };
                    (ptr, memory)
                }
                Protocol::Pvh => {
                    let magic = read::<u32>(addr);
                    if magic != PVH_MAGIC {
                        return Err(BootError::BadPvhMagic(magic));
                    }
                    // The memory map exists from version 1 on.
                    let count = if read::<u32>(addr + 4) >= 1 {
                        (read::<u32>(addr + 48) as usize).min(MAX_PVH_MEMMAP)
                    } else {
                        0
                    };
                    let memory = MemoryMap {
                        base: pointer(read::<u64>(addr + 40))?,
                        count,
                        stride: 24,
                    };
                    (read::<u64>(addr + 24), memory)
                }
            };
            Ok(BootInfo {
                protocol,
                cmdline: c_string(pointer(cmdline)?),
                memory,
            })
        }
    }
}

/// `addr` as a pointer's address.
fn pointer(addr: u64) -> Result<usize, BootError> {
    usize::try_from(addr).map_err(|_| BootError::BadAddress(addr))
}

/// The NUL-terminated string at `addr` (empty for a null pointer).
///
/// # Safety
/// `addr` must be null or point to readable memory up to a NUL or `MAX_CMDLINE` bytes.
unsafe fn c_string(addr: usize) -> &'static [u8] {
    if addr == 0 {
        return &[];
    }
    let mut len = 0;
    // SAFETY: the caller guarantees the bytes up to the NUL (or the cap) are readable.
    while len < MAX_CMDLINE && unsafe { read::<u8>(addr + len) } != 0 {
        len += 1;
    }
    // SAFETY: the `len` bytes were just read and stay unchanged (caller's contract).
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

/// Reads a `T` at a physical (= virtual) address without alignment requirements.
///
/// # Safety
/// `addr..addr + size_of::<T>()` must be readable and hold a valid `T`.
unsafe fn read<T: Copy>(addr: usize) -> T {
    // SAFETY: forwarded to the caller.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
        buf[off..off + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn linux_zero_page() {
        let cmdline = b"console=ttyS0 ember.echo\0".to_vec().leak();
        let mut page = vec![0u8; 4096];
        let ptr = cmdline.as_ptr() as u64;
        put(&mut page, 0x228, &ptr.to_le_bytes()[..4]);
        put(&mut page, 0xc8, &((ptr >> 32) as u32).to_le_bytes());
        page[0x1e8] = 2;
        let mut e820 = Vec::new();
        for (start, size, kind) in [(0u64, 0x9fc00u64, 1u32), (0x100000, 0x7f00000, 1)] {
            e820.extend_from_slice(&start.to_le_bytes());
            e820.extend_from_slice(&size.to_le_bytes());
            e820.extend_from_slice(&kind.to_le_bytes());
        }
        put(&mut page, 0x2d0, &e820);
        let page = page.leak();
        // SAFETY: `page` is a complete zero page whose pointers are valid and leaked.
        let boot = unsafe { BootInfo::parse(Protocol::Linux64, page.as_ptr() as u64) }.unwrap();
        assert_eq!(boot.cmdline, b"console=ttyS0 ember.echo");
        let regions: Vec<_> = boot.memory.iter().collect();
        assert_eq!(regions.len(), 2);
        assert_eq!(
            regions[1],
            MemRegion {
                start: 0x100000,
                size: 0x7f00000,
                kind: 1
            }
        );
    }

    #[test]
    fn pvh_start_info() {
        let cmdline = b"a b\0".to_vec().leak();
        let mut map = Vec::new();
        map.extend_from_slice(&0x1000u64.to_le_bytes());
        map.extend_from_slice(&0x2000u64.to_le_bytes());
        map.extend_from_slice(&2u32.to_le_bytes());
        map.extend_from_slice(&0u32.to_le_bytes());
        let map = map.leak();
        let mut info = vec![0u8; 56];
        put(&mut info, 0, &PVH_MAGIC.to_le_bytes());
        put(&mut info, 4, &1u32.to_le_bytes());
        put(&mut info, 24, &(cmdline.as_ptr() as u64).to_le_bytes());
        put(&mut info, 40, &(map.as_ptr() as u64).to_le_bytes());
        put(&mut info, 48, &1u32.to_le_bytes());
        let info = info.leak();
        // SAFETY: `info` is a complete start_info whose pointers are valid and leaked.
        let boot = unsafe { BootInfo::parse(Protocol::Pvh, info.as_ptr() as u64) }.unwrap();
        assert_eq!(boot.cmdline, b"a b");
        let regions: Vec<_> = boot.memory.iter().collect();
        assert_eq!(
            regions,
            [MemRegion {
                start: 0x1000,
                size: 0x2000,
                kind: 2
            }]
        );

        info[0] = 0;
        // SAFETY: as above.
        let err = unsafe { BootInfo::parse(Protocol::Pvh, info.as_ptr() as u64) }.unwrap_err();
        assert_eq!(err, BootError::BadPvhMagic(0x336e_c500));
    }
}
