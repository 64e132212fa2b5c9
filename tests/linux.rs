//! A Linux guest, up to the early boot lines this machine's emulated ring 0
//! reaches (see `../shared/MACHINE.md`): banner, our command line, our e820
//! map, our ACPI tables and our vCPU count, found through ACPI or the MP table.

use std::time::Duration;

use ember_test_support::{artifact, require_kvm, Ember, TempDir};
use serde_json::json;

/// Generous: the guest's ring-0 code is emulated here, about 5000x slower than on hardware.
const EARLY_BOOT: Duration = Duration::from_secs(180);

/// The `BIOS-e820: ... usable` lines Linux prints for ember's layout of `mem_mib`.
fn expected_usable(mem_mib: u64) -> Vec<String> {
    let size = mem_mib << 20;
    let gap = 0xd000_0000u64;
    let mut ranges = vec![(0u64, 0x9fc00u64), (0x10_0000, size.min(gap) - 0x10_0000)];
    if size > gap {
        ranges.push((1 << 32, size - gap));
    }
    ranges
        .iter()
        .map(|&(start, len)| {
            format!(
                "BIOS-e820: [mem {start:#018x}-{:#018x}] usable",
                start + len - 1
            )
        })
        .collect()
}

const BOOT_ARGS: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=1 pci=off";

/// Boots `kernel` with the rootfs drive, the initrd, `vcpus` vCPUs and 256 MiB and
/// `extra_args` after the usual command line, and checks its early lines: the
/// vCPU count among them. Returns the running guest.
fn boot_linux(kernel: &str, extra_args: &str, vcpus: u8) -> Ember {
    require_kvm();
    let dir = TempDir::new("linux");
    let boot_args = format!("{BOOT_ARGS}{extra_args}");
    let rootfs = artifact("rootfs");
    let initrd = artifact("initrd");
    let config = json!({
        "boot-source": {"kernel_image_path": artifact(kernel), "initrd_path": initrd, "boot_args": boot_args},
        "drives": [{"drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": true, "is_read_only": true}],
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": 256}
    });
    let ember = Ember::with_config(&dir, &config);

    let banner = ember.expect_line("Linux version 6.1", EARLY_BOOT);
    assert!(banner.contains("SMP"), "{banner}");
    let expected_cmdline =
        format!("Command line: {boot_args} root=/dev/vda ro virtio_mmio.device=4K@0xd0001000:5");
    assert_eq!(
        ember.expect_line("Command line: ", EARLY_BOOT),
        expected_cmdline
    );
    ember.expect_line(&format!("smpboot: Allowing {vcpus} CPUs"), EARLY_BOOT);
    let usable: Vec<String> = ember
        .console()
        .into_iter()
        .filter(|l| l.starts_with("BIOS-e820:") && l.ends_with("usable"))
        .collect();
    assert_eq!(usable, expected_usable(256));

    // ember puts the initrd at the top of low memory, page aligned.
    let size = std::fs::metadata(&initrd).unwrap().len();
    let start = ((256u64 << 20) - size) & !0xfff;
    let ramdisk = ember
        .console()
        .into_iter()
        .find(|l| l.starts_with("RAMDISK:"));
    assert_eq!(
        ramdisk,
        Some(format!(
            "RAMDISK: [mem {start:#010x}-{:#010x}]",
            (256u64 << 20) - 1
        ))
    );
    ember
}

/// The tables Linux lists as it finds them: ember's RSDP where the BIOS area scan
/// and the boot protocols point, and the four tables it chains to.
fn expect_acpi_tables(ember: &Ember) {
    let rsdp = ember.expect_line("ACPI: RSDP ", EARLY_BOOT);
    assert!(rsdp.starts_with("ACPI: RSDP 0x00000000000E0000"), "{rsdp}");
    assert!(rsdp.contains("EMBER"), "{rsdp}");
    for table in ["XSDT", "FACP", "DSDT", "APIC"] {
        let line = ember.expect_line(&format!("ACPI: {table} "), EARLY_BOOT);
        assert!(line.contains("EMBER"), "{line}");
    }
}

#[test]
fn linux_vmlinux_through_pvh_reports_our_command_line_memory_map_initrd_and_vcpus() {
    let ember = boot_linux("kernel", "", 2);
    expect_acpi_tables(&ember);
}

#[test]
fn linux_bzimage_through_the_64bit_boot_protocol_finds_the_vcpus_in_the_mp_table() {
    boot_linux("bzimage", " acpi=off", 2);
}

#[test]
fn linux_without_mp_table_parsing_finds_every_vcpu_through_acpi() {
    let ember = boot_linux("kernel-acpi", "", 3);
    expect_acpi_tables(&ember);
}

/// With `--enable-pci` (and no `pci=off`): Linux lists ember's MCFG among the
/// ACPI tables and the ECAM as reserved in its e820 map; where this machine
/// lets it get that far, its PCI probe lists ember's functions (the root drive
/// 1af4:1042 in slot 1, the vsock 1af4:1053 in slot 2). Here emulated ring 0
/// stops Linux before it probes PCI (a KVM internal error in its FPU setup),
/// and the test says how far it got.
#[test]
fn linux_on_pci_finds_the_mcfg_and_probes_as_far_as_it_gets() {
    require_kvm();
    let dir = TempDir::new("linux-pci");
    let boot_args = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=1";
    let config = json!({
        "boot-source": {"kernel_image_path": artifact("kernel"), "initrd_path": artifact("initrd"), "boot_args": boot_args},
        "drives": [{"drive_id": "rootfs", "path_on_host": artifact("rootfs"), "is_root_device": true, "is_read_only": true}],
        "vsock": {"guest_cid": 3, "uds_path": dir.path("v.sock")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256}
    });
    let path = dir.path("vm.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let ember = Ember::spawn(
        &[
            "--no-api",
            "--config-file",
            path.to_str().unwrap(),
            "--enable-pci",
        ],
        None,
    );
    assert_eq!(
        ember.expect_line("Command line: ", EARLY_BOOT),
        format!("Command line: {boot_args} root=/dev/vda ro"),
        "no virtio-mmio devices and no pci=off on PCI"
    );
    ember.expect_line(
        "BIOS-e820: [mem 0x00000000e0000000-0x00000000e00fffff] reserved",
        EARLY_BOOT,
    );
    expect_acpi_tables(&ember);
    let mcfg = ember.expect_line("ACPI: MCFG ", EARLY_BOOT);
    assert!(mcfg.contains("EMBER"), "{mcfg}");
    match ember.wait_line(EARLY_BOOT, |l| l.starts_with("pci 0000:00:02.0")) {
        Some(_) => {
            let probed = ember.lines_starting("pci 0000:00:0");
            for (slot, id) in [("01", "[1af4:1042]"), ("02", "[1af4:1053]")] {
                assert!(
                    probed
                        .iter()
                        .any(|l| l.starts_with(&format!("pci 0000:00:{slot}.0: {id}"))),
                    "{probed:?}"
                );
            }
            println!("Linux probed ember's PCI functions: {probed:?}");
        }
        None => {
            let console = ember.console();
            let last = console.last().cloned().unwrap_or_default();
            assert!(
                !console.iter().any(|l| l.starts_with("pci 0000:")),
                "Linux probed PCI but not ember's functions: {console:?}"
            );
            println!("Linux stopped before probing PCI, at: {last}");
        }
    }
}
