//! Loading a kernel and writing what its boot protocol expects to find:
//! command line, e820/PVH memory map, initrd and MP table.

use std::fs::File;
use std::io::Seek;
use std::path::Path;

use crate::vstate::memory::GuestMemoryMmap;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress};

use super::acpi::{self, DsdtDevice};
use super::layout::{
    e820_map, e820_map_with_ecam, CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_START,
    PVH_INFO_START, PVH_MEMMAP_START, ZERO_PAGE_START,
};
use super::mptable;
use super::regs::{BootEntry, BootProtocol};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kernel or initrd file that cannot be opened.
    #[error("cannot open {what} '{path}': {source}")]
    Open {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// A kernel image linux-loader cannot load.
    #[error("kernel image '{path}' is neither a valid ELF nor a bzImage: {source}")]
    InvalidKernel { path: String, source: loader::Error },
    /// An initrd that does not fit below the MMIO gap.
    #[error("initrd '{path}' ({size} bytes) does not fit in guest memory below {limit:#x}")]
    InitrdTooLarge { path: String, size: u64, limit: u64 },
    /// An initrd that cannot be read into guest memory.
    #[error("cannot read initrd '{path}': {source}")]
    ReadInitrd {
        path: String,
        source: vm_memory::GuestMemoryError,
    },
    /// The command line cannot be written to guest memory.
    #[error("cannot write the kernel command line: {0}")]
    Cmdline(loader::Error),
    /// A command line with a NUL byte or too long.
    #[error("invalid kernel command line: {0}")]
    CmdlineText(linux_loader::cmdline::Error),
    /// The zero page or PVH start info cannot be written.
    #[error("cannot write boot parameters: {0}")]
    BootParams(#[from] linux_loader::configurator::Error),
    /// The ACPI tables cannot be built or written.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    /// The MP table cannot be built or written.
    #[error("cannot write the MP table: {0}")]
    MpTable(String),
    /// A value too large for its boot-protocol field.
    #[error("{what} ({value:#x}) does not fit its boot protocol field")]
    FieldOverflow { what: &'static str, value: u64 },
}

/// `value` as the (narrower) boot protocol field it goes in.
fn field<T: TryFrom<u64>>(what: &'static str, value: u64) -> Result<T, Error> {
    T::try_from(value).map_err(|_| Error::FieldOverflow { what, value })
}

/// What loading the kernel told us.
pub struct LoadedKernel {
    pub entry: BootEntry,
    /// The bzImage setup header, which the zero page must carry.
    setup_header: Option<setup_header>,
}

/// An initrd placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct Initrd {
    pub address: u64,
    pub size: u64,
}

/// Loads an ELF (PVH if it has the Xen note, else 64-bit Linux protocol) or a bzImage.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, Error> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|source| Error::Open {
        what: "kernel image",
        path: shown.clone(),
        source,
    })?;
    let invalid = |source| Error::InvalidKernel {
        path: shown.clone(),
        source,
    };
    match Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))) {
        Ok(result) => {
            let entry = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(address) => BootEntry {
                    protocol: BootProtocol::Pvh,
                    address: address.0,
                },
                _ => BootEntry {
                    protocol: BootProtocol::Linux64,
                    address: result.kernel_load.0,
                },
            };
            Ok(LoadedKernel {
                entry,
                setup_header: None,
            })
        }
        Err(loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)) => {
            file.rewind().map_err(|e| Error::Open {
                what: "kernel image",
                path: shown.clone(),
                source: e,
            })?;
            let result = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(invalid)?;
            // The 64-bit entry point of a bzImage is 0x200 past where it is loaded.
            Ok(LoadedKernel {
                entry: BootEntry {
                    protocol: BootProtocol::Linux64,
                    address: result.kernel_load.0 + 0x200,
                },
                setup_header: result.setup_header,
            })
        }
        Err(e) => Err(invalid(e)),
    }
}

/// Loads the initrd at the top of low memory, page aligned, where neither
/// the kernel nor the boot structures are.
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path, mem_size: u64) -> Result<Initrd, Error> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|source| Error::Open {
        what: "initrd",
        path: shown.clone(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| Error::Open {
            what: "initrd",
            path: shown.clone(),
            source,
        })?
        .len();
    let top = mem_size.min(MMIO_GAP_START);
    let address = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= HIMEM_START)
        .ok_or_else(|| Error::InitrdTooLarge {
            path: shown.clone(),
            size,
            limit: top,
        })?;
    // Below `top`, checked above, so it fits.
    let len = usize::try_from(size).map_err(|_| Error::InitrdTooLarge {
        path: shown.clone(),
        size,
        limit: top,
    })?;
    mem.read_exact_volatile_from(GuestAddress(address), &mut file, len)
        .map_err(|source| Error::ReadInitrd {
            path: shown,
            source,
        })?;
    Ok(Initrd { address, size })
}

/// Writes the command line, the protocol's boot information, the MP table
/// and the ACPI tables, whose DSDT lists `devices`.
pub fn configure_system(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<Initrd>,
    mem_size: u64,
    num_cpus: u8,
    devices: &[DsdtDevice],
) -> Result<(), Error> {
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(Error::Cmdline)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(Error::CmdlineText)?
        .as_bytes()
        .len();

    let table = mptable::build(num_cpus, EBDA_START).map_err(|e| Error::MpTable(e.to_string()))?;
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(|e| Error::MpTable(e.to_string()))?;

    let rsdp = acpi::write(mem, num_cpus, devices)?;

    // Linux trusts the MCFG's ECAM only where the e820 map reserves it.
    let pci = devices
        .iter()
        .any(|d| matches!(d, DsdtDevice::PciHostBridge { .. }));
    let e820 = if pci {
        e820_map_with_ecam(mem_size)
    } else {
        e820_map(mem_size)
    };
    match kernel.entry.protocol {
        BootProtocol::Linux64 => write_zero_page(mem, kernel, cmdline_len, initrd, &e820, rsdp),
        BootProtocol::Pvh => write_pvh_start_info(mem, initrd, &e820, rsdp),
    }
}

/// The Linux boot protocol's zero page, from the kernel's own setup header.
fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<Initrd>,
    e820: &[(u64, u64, u32)],
    rsdp: u64,
) -> Result<(), Error> {
    let mut params = boot_params {
        acpi_rsdp_addr: rsdp,
        ..Default::default()
    };
    if let Some(header) = kernel.setup_header {
        params.hdr = header;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448;
    params.hdr.kernel_alignment = 0x0100_0000;
    params.hdr.cmd_line_ptr = field("command line address", CMDLINE_START)?;
    params.hdr.cmdline_size = field("command line length", cmdline_len as u64)?;
    if let Some(initrd) = initrd {
        // `load_initrd` placed it below the MMIO gap, so both fit.
        params.hdr.ramdisk_image = field("initrd address", initrd.address)?;
        params.hdr.ramdisk_size = field("initrd size", initrd.size)?;
    }
    for (slot, &(addr, size, type_)) in params.e820_table.iter_mut().zip(e820) {
        slot.addr = addr;
        slot.size = size;
        slot.r#type = type_;
    }
    params.e820_entries = field("e820 entry count", e820.len() as u64)?;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )?;
    Ok(())
}

/// The PVH start info, its memory map and the initrd as its one module.
fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<Initrd>,
    e820: &[(u64, u64, u32)],
    rsdp: u64,
) -> Result<(), Error> {
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|&(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .iter()
        .map(|i| hvm_modlist_entry {
            paddr: i.address,
            size: i.size,
            ..Default::default()
        })
        .collect();
    let memmap_bytes = (memmap.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
    let modlist_start = (PVH_MEMMAP_START + memmap_bytes + 0xf) & !0xf;
    let start_info = hvm_start_info {
        magic: 0x336e_c578,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: field("memory map entry count", memmap.len() as u64)?,
        nr_modules: field("module count", modules.len() as u64)?,
        modlist_paddr: if modules.is_empty() { 0 } else { modlist_start },
        rsdp_paddr: rsdp,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(modlist_start));
    }
    PvhBootConfigurator::write_bootparams(&params, mem)?;
    Ok(())
}
