//! The guest-physical memory map ember gives every microVM.
//!
//! Low memory holds the boot structures at fixed addresses (the places Linux
//! and PVH guests look for them); RAM then runs from 1 MiB up to the 32-bit
//! MMIO gap and continues above 4 GiB.

/// Global descriptor table for the boot vCPU.
pub const BOOT_GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty) for the boot vCPU.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map, right after the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// Linux `boot_params` (the "zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, PDPT and one page directory.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line a Linux 6.x x86 guest accepts (`COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area: ember puts the MP table here, where guests scan.
pub const EBDA_START: u64 = 0x9fc00;
/// First address past the legacy VGA/BIOS hole: kernels are loaded above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// ACPI's RSDP, in the BIOS area guests scan (0xe0000-0xfffff); the other
/// tables follow it, up to [`ACPI_END`].
pub const RSDP_START: u64 = 0xe_0000;
pub const ACPI_END: u64 = HIMEM_START;

/// Start of the 32-bit MMIO gap: guest RAM never covers [gap start, 4 GiB).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// First address above 4 GiB.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// The boot-timer device sits at the first MMIO page.
pub const BOOT_TIMER_START: u64 = MMIO_GAP_START;
/// virtio-mmio devices follow, one page each.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + 0x1000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// With `--enable-pci`, the virtio devices' BARs: one window of
/// [`PCI_BAR_SIZE`] per PCI slot from 1, in the gap past the virtio-mmio
/// windows (unused then, but for the boot timer).
pub const PCI_MMIO_START: u64 = 0xd100_0000;
/// Size of each virtio-pci function's BAR 0.
pub const PCI_BAR_SIZE: u64 = 0x8000;
/// PCI configuration space (ECAM) for bus 0: 32 slots of 8 functions of
/// 4 KiB. The BAR window runs up to it.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// First IRQ handed to virtio devices (0-4 are legacy: timer, keyboard, cascade, COM2, COM1).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last IRQ the in-kernel IOAPIC routes.
pub const IRQ_MAX: u32 = 23;
/// Address of the in-kernel IOAPIC and the local APIC.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS and one for the identity map, placed in the gap.
/// (A `usize`, as `KVM_SET_TSS_ADDR` takes it.)
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// An e820 memory type.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One guest-physical RAM range: `(start, length)`.
pub type RamRange = (u64, u64);

/// RAM ranges for `mem_size` bytes of guest memory, skipping the MMIO gap.
pub fn ram_ranges(mem_size: u64) -> Vec<RamRange> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// The e820 map a guest sees for `mem_size` bytes of RAM: `(start, length, type)`.
///
/// Base memory stops below the EBDA (where the MP table lives) and the rest
/// starts at 1 MiB, as on a PC; everything else is a hole the guest leaves alone.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, EBDA_START, E820_RAM)];
    for (start, len) in ram_ranges(mem_size) {
        let start_ = start.max(HIMEM_START);
        let end = start + len;
        if end > start_ {
            map.push((start_, end - start_, E820_RAM));
        }
    }
    map
}

/// The e820 map with the PCI configuration space reserved, which Linux wants
/// before it trusts the ACPI MCFG table.
pub fn e820_map_with_ecam(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = e820_map(mem_size);
    map.push((PCI_ECAM_START, PCI_ECAM_SIZE, E820_RESERVED));
    map
}

/// Guest-physical address of BAR 0 of the function in PCI slot `slot`.
pub fn pci_bar(slot: u8) -> Option<u64> {
    let index = u64::from(slot.checked_sub(1)?);
    let address = PCI_MMIO_START + index * PCI_BAR_SIZE;
    (address + PCI_BAR_SIZE <= PCI_ECAM_START).then_some(address)
}

/// Guest-physical address of the `index`-th virtio-mmio device and its IRQ.
pub fn virtio_slot(index: usize) -> Option<(u64, u32)> {
    let irq = VIRTIO_IRQ_BASE.checked_add(u32::try_from(index).ok()?)?;
    (irq <= IRQ_MAX).then(|| (VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE, irq))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_memory_is_one_range_below_the_gap() {
        assert_eq!(ram_ranges(128 * MIB), vec![(0, 128 * MIB)]);
        assert_eq!(
            e820_map(128 * MIB),
            vec![
                (0, EBDA_START, E820_RAM),
                (HIMEM_START, 128 * MIB - HIMEM_START, E820_RAM)
            ]
        );
    }

    #[test]
    fn large_memory_continues_above_4g() {
        let size = 4096 * MIB;
        let ranges = ram_ranges(size);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0], (0, MMIO_GAP_START));
        assert_eq!(ranges[1], (1 << 32, size - MMIO_GAP_START));
        assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), size);
        let e820 = e820_map(size);
        assert_eq!(e820[2], (1 << 32, size - MMIO_GAP_START, E820_RAM));
        assert!(e820
            .iter()
            .all(|&(s, l, _)| s + l <= MMIO_GAP_START || s >= MMIO_GAP_END));
    }

    #[test]
    fn virtio_slots_stop_at_the_last_ioapic_pin() {
        assert_eq!(virtio_slot(0), Some((VIRTIO_MMIO_START, 5)));
        assert_eq!(virtio_slot(1), Some((VIRTIO_MMIO_START + 0x1000, 6)));
        assert_eq!(virtio_slot(18).map(|s| s.1), Some(23));
        assert_eq!(virtio_slot(19), None);
    }
}
