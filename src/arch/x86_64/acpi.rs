//! ACPI tables, as Firecracker gives them: guests whose kernels find CPUs and
//! devices only through ACPI (Firecracker's recommended configs turn MP table
//! parsing off) see every vCPU and device. The RSDP sits where the BIOS area
//! scan finds it and the boot protocols point at it; the XSDT lists a
//! hardware-reduced FADT (no PM blocks, no SCI) and the MADT (the IOAPIC and
//! one local APIC per vCPU); the FADT points at the DSDT, which describes the
//! legacy devices and each virtio-mmio window, or with `--enable-pci` the
//! PCI host bridge, whose ECAM the XSDT's MCFG gives. The rust-vmm
//! `acpi_tables` crate writes the tables and the AML.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{ACPI_END, APIC_START, IOAPIC_START, RSDP_START};
use crate::vstate::memory::GuestMemoryMmap;

const OEM_ID: [u8; 6] = *b"EMBER ";
const OEM_REVISION: u32 = 1;
/// The FADT's hypervisor vendor identity.
const HYPERVISOR_VENDOR: [u8; 8] = *b"EMBERVMM";
/// IA-PC boot architecture flag: no VGA to probe.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// Tables start 16-byte aligned.
const ALIGN: u64 = 16;
/// The APIC addresses as the MADT's 32-bit fields hold them.
const APIC_ADDRESS: u32 = low_u32(APIC_START);
const IOAPIC_ADDRESS: u32 = low_u32(IOAPIC_START);

/// `value` as a `u32`, for constants only: one that does not fit stops the build.
const fn low_u32(value: u64) -> u32 {
    let [a, b, c, d, 0, 0, 0, 0] = value.to_le_bytes() else {
        panic!("constant does not fit in a u32")
    };
    u32::from_le_bytes([a, b, c, d])
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// More tables than the BIOS area holds (many vCPUs and devices).
    #[error("the ACPI tables need {0} bytes, more than the {1} the BIOS area has")]
    TooLarge(u64, u64),
    /// Guest memory that does not cover the BIOS area.
    #[error("cannot write the ACPI tables: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// A device the DSDT describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsdtDevice {
    /// A 16550-compatible UART (PNP0501): eight ports from `port`, `irq`.
    Uart { port: u16, irq: u32 },
    /// An i8042 keyboard controller (PNP0303) at ports 0x60 and 0x64.
    Keyboard { irq: u32 },
    /// A virtio-mmio window (LNRO0005, Linux's virtio-mmio ACPI id).
    VirtioMmio { address: u32, size: u32, irq: u32 },
    /// The PCI host bridge (PNP0A08, PCI Express): bus 0, its BARs in
    /// `window` (`(start, size)`); its ECAM at `ecam` goes in the MCFG table.
    PciHostBridge {
        window: (u32, u32),
        ecam: (u32, u32),
    },
    /// Memory the platform uses (PNP0C02): the ECAM, which Linux wants
    /// reserved there before it trusts the MCFG.
    Reserved { address: u32, size: u32 },
}

impl DsdtDevice {
    /// The device's AML, named `name` under `\_SB_`.
    fn aml(&self, name: &str, uid: u8, sink: &mut Vec<u8>) {
        let edge = |irq| aml::Interrupt::new(true, true, false, false, irq);
        match *self {
            DsdtDevice::Uart { port, irq } => {
                let (hid, io, irq) = (
                    aml::EISAName::new("PNP0501"),
                    aml::IO::new(port, port, 1, 8),
                    edge(irq),
                );
                let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
                device(name, &hid, uid, &crs, sink);
            }
            DsdtDevice::Keyboard { irq } => {
                let (hid, data, command, irq) = (
                    aml::EISAName::new("PNP0303"),
                    aml::IO::new(0x60, 0x60, 1, 1),
                    aml::IO::new(0x64, 0x64, 1, 1),
                    edge(irq),
                );
                let crs = aml::ResourceTemplate::new(vec![&data, &command, &irq]);
                device(name, &hid, uid, &crs, sink);
            }
            DsdtDevice::VirtioMmio { address, size, irq } => {
                let (window, irq) = (aml::Memory32Fixed::new(true, address, size), edge(irq));
                let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
                device(name, &"LNRO0005", uid, &crs, sink);
            }
            DsdtDevice::Reserved { address, size } => {
                let (hid, window) = (
                    aml::EISAName::new("PNP0C02"),
                    aml::Memory32Fixed::new(false, address, size),
                );
                let crs = aml::ResourceTemplate::new(vec![&window]);
                device(name, &hid, uid, &crs, sink);
            }
            DsdtDevice::PciHostBridge { window, .. } => {
                let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
                let memory = aml::AddressSpace::new_memory(
                    aml::AddressSpaceCacheable::NotCacheable,
                    true,
                    window.0,
                    window.0 + (window.1 - 1),
                    None,
                );
                let crs = aml::ResourceTemplate::new(vec![&bus, &memory]);
                let (hid, cid, uid, seg, bbn, crs) = (
                    aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
                    aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
                    aml::Name::new("_UID".into(), &uid),
                    aml::Name::new("_SEG".into(), &aml::ZERO),
                    aml::Name::new("_BBN".into(), &aml::ZERO),
                    aml::Name::new("_CRS".into(), &crs),
                );
                aml::Device::new(name.into(), vec![&hid, &cid, &uid, &seg, &bbn, &crs])
                    .to_aml_bytes(sink);
            }
        }
    }
}

/// `Device (name) { _HID, _UID, _CRS }`.
fn device(name: &str, hid: &dyn Aml, uid: u8, crs: &dyn Aml, sink: &mut Vec<u8>) {
    let (hid, uid, crs) = (
        aml::Name::new("_HID".into(), hid),
        aml::Name::new("_UID".into(), &uid),
        aml::Name::new("_CRS".into(), crs),
    );
    aml::Device::new(name.into(), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
}

/// The DSDT's definition block: every device under `\_SB_`.
fn dsdt_body(devices: &[DsdtDevice]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        // Four-character names: DV00..DVFF, unique per table.
        let index = u8::try_from(i).unwrap_or(u8::MAX);
        let name = format!("\\_SB_.DV{index:02X}");
        device.aml(&name, index, &mut body);
    }
    body
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

/// The tables with the guest-physical address each goes to; the RSDP first.
pub fn build(num_cpus: u8, devices: &[DsdtDevice]) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    let mut next = RSDP_START + 64;
    let mut place = |table: Vec<u8>| {
        let at = next;
        next = (next + table.len() as u64).next_multiple_of(ALIGN);
        (at, table)
    };

    let body = dsdt_body(devices);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"EMBRDSDT", OEM_REVISION);
    dsdt.append_slice(&body);
    let dsdt = place(dsdt.as_slice().to_vec());

    let mut fadt = FADTBuilder::new(OEM_ID, *b"EMBRFACP", OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt.0);
    fadt.iapc_boot_arch = IAPC_VGA_NOT_PRESENT.into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();
    let fadt = place(bytes(&fadt.finalize()));

    let mut madt = MADT::new(
        OEM_ID,
        *b"EMBRAPIC",
        OEM_REVISION,
        LocalInterruptController::Address(APIC_ADDRESS),
    );
    madt.add_structure(IoApic::new(0, IOAPIC_ADDRESS, 0));
    for cpu in 0..num_cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    let madt = place(bytes(&madt));

    let mcfg = devices.iter().find_map(|d| match *d {
        DsdtDevice::PciHostBridge { ecam, .. } => {
            let mut mcfg = MCFG::new(OEM_ID, *b"EMBRMCFG", OEM_REVISION);
            mcfg.add_ecam(u64::from(ecam.0), 0, 0, 0);
            Some(place(bytes(&mcfg)))
        }
        _ => None,
    });

    let mut xsdt = XSDT::new(OEM_ID, *b"EMBRXSDT", OEM_REVISION);
    xsdt.add_entry(fadt.0);
    xsdt.add_entry(madt.0);
    if let Some((at, _)) = &mcfg {
        xsdt.add_entry(*at);
    }
    let xsdt = place(bytes(&xsdt));

    if next > ACPI_END {
        return Err(Error::TooLarge(next - RSDP_START, ACPI_END - RSDP_START));
    }
    let rsdp = (RSDP_START, bytes(&Rsdp::new(OEM_ID, xsdt.0)));
    Ok([rsdp, xsdt, fadt, madt, dsdt]
        .into_iter()
        .chain(mcfg)
        .collect())
}

/// Writes the tables into guest memory; returns the RSDP's address.
pub fn write(mem: &GuestMemoryMmap, num_cpus: u8, devices: &[DsdtDevice]) -> Result<u64, Error> {
    for (address, table) in build(num_cpus, devices)? {
        mem.write_slice(&table, GuestAddress(address))?;
    }
    Ok(RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    /// The table at `address` among `tables`, checked: its signature, its
    /// length field and its checksum.
    fn table<'a>(tables: &'a [(u64, Vec<u8>)], address: u64, signature: &[u8; 4]) -> &'a [u8] {
        let (_, bytes) = tables.iter().find(|(at, _)| *at == address).unwrap();
        assert_eq!(&bytes[..4], signature);
        assert_eq!(
            u32_at(bytes, 4) as usize,
            bytes.len(),
            "{signature:?} length"
        );
        assert!(sums_to_zero(bytes), "{signature:?} checksum");
        bytes
    }

    fn devices() -> Vec<DsdtDevice> {
        vec![
            DsdtDevice::Uart {
                port: 0x3f8,
                irq: 4,
            },
            DsdtDevice::Keyboard { irq: 1 },
            DsdtDevice::VirtioMmio {
                address: 0xd000_1000,
                size: 0x1000,
                irq: 5,
            },
            DsdtDevice::VirtioMmio {
                address: 0xd000_2000,
                size: 0x1000,
                irq: 6,
            },
        ]
    }

    #[test]
    fn the_tables_chain_from_the_rsdp_with_valid_checksums() {
        let tables = build(3, &devices()).unwrap();
        let (rsdp_at, rsdp) = &tables[0];
        assert_eq!(*rsdp_at, RSDP_START);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(sums_to_zero(&rsdp[..20]), "ACPI 1.0 checksum");
        assert!(sums_to_zero(rsdp), "extended checksum");
        assert_eq!(rsdp[15], 2, "revision 2: the XSDT is used");

        let xsdt = table(&tables, u64_at(rsdp, 24), b"XSDT");
        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|e| u64_at(e, 0)).collect();
        assert_eq!(entries.len(), 2);
        let fadt = table(&tables, entries[0], b"FACP");
        let madt = table(&tables, entries[1], b"APIC");

        assert_ne!(
            u32_at(fadt, 112) & Flags::HwReducedAcpi as u32,
            0,
            "hardware-reduced"
        );
        assert_eq!(&fadt[268..276], b"EMBERVMM");
        let dsdt = table(&tables, u64_at(fadt, 140), b"DSDT");

        assert_eq!(u32_at(madt, 36), APIC_ADDRESS);
        let mut entries = Vec::new();
        let mut at = 44;
        while at < madt.len() {
            entries.push((madt[at], madt[at + 2], madt[at + 3]));
            at += usize::from(madt[at + 1]);
        }
        assert_eq!(
            entries,
            [(1, 0, 0), (0, 0, 0), (0, 1, 1), (0, 2, 2)],
            "IOAPIC, 3 CPUs"
        );

        let count = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(b"LNRO0005"), 2, "one per virtio-mmio window");
        assert_eq!(count(&0xd000_2000u32.to_le_bytes()), 1);
        // PNP0501 and PNP0303 as compressed EISA ids.
        assert_eq!(count(&[0x41, 0xd0, 0x05, 0x01]), 1);
        assert_eq!(count(&[0x41, 0xd0, 0x03, 0x03]), 1);
        for table in &tables[1..] {
            assert!(table.0 % ALIGN == 0 && table.0 + table.1.len() as u64 <= ACPI_END);
        }
    }

    #[test]
    fn a_pci_machine_has_its_host_bridge_and_an_mcfg() {
        let bridge = DsdtDevice::PciHostBridge {
            window: (0xd100_0000, 0x0f00_0000),
            ecam: (0xe000_0000, 0x10_0000),
        };
        let reserved = DsdtDevice::Reserved {
            address: 0xe000_0000,
            size: 0x10_0000,
        };
        let tables = build(1, &[bridge, reserved]).unwrap();
        let xsdt = table(&tables, u64_at(&tables[0].1, 24), b"XSDT");
        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|e| u64_at(e, 0)).collect();
        assert_eq!(entries.len(), 3);
        let mcfg = table(&tables, entries[2], b"MCFG");
        // One allocation: base, segment 0, buses 0-0.
        assert_eq!(mcfg.len(), 44 + 16);
        assert_eq!(u64_at(mcfg, 44), 0xe000_0000);
        assert_eq!(&mcfg[52..56], &[0, 0, 0, 0]);
        let fadt = table(&tables, entries[0], b"FACP");
        let dsdt = table(&tables, u64_at(fadt, 140), b"DSDT");
        let count = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| *w == needle).count();
        // PNP0A08 and PNP0A03 as compressed EISA ids, and both windows.
        assert_eq!(count(&[0x41, 0xd0, 0x0a, 0x08]), 1);
        assert_eq!(count(&[0x41, 0xd0, 0x0a, 0x03]), 1);
        assert_eq!(count(&[0x41, 0xd0, 0x0c, 0x02]), 1, "PNP0C02 for the ECAM");
        assert_eq!(count(&0xd100_0000u32.to_le_bytes()), 1);
        assert_eq!(count(&0xdfff_ffffu32.to_le_bytes()), 1);
        assert_eq!(count(&0xe000_0000u32.to_le_bytes()), 1);
        assert_eq!(count(b"LNRO0005"), 0);
    }

    #[test]
    fn the_largest_machine_fits_the_bios_area() {
        let many: Vec<DsdtDevice> = (0..19)
            .map(|i| DsdtDevice::VirtioMmio {
                address: 0xd000_1000 + i * 0x1000,
                size: 0x1000,
                irq: 5 + i,
            })
            .chain([
                DsdtDevice::Uart {
                    port: 0x3f8,
                    irq: 4,
                },
                DsdtDevice::Keyboard { irq: 1 },
            ])
            .collect();
        let tables = build(32, &many).unwrap();
        let madt = tables.iter().find(|(_, t)| &t[..4] == b"APIC").unwrap();
        assert_eq!(madt.1.len(), 44 + 12 + 32 * 8);
    }
}
