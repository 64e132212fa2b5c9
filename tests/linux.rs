//! A Linux guest, up to the early boot lines this machine's emulated ring 0
//! reaches (see `../shared/MACHINE.md`): banner, our command line, our e820
//! map and our vCPU count.

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

/// Boots `kernel` with the rootfs drive and the initrd, 2 vCPUs and 256 MiB, and
/// checks its early lines.
fn boot_linux(kernel: &str) {
    require_kvm();
    let dir = TempDir::new("linux");
    let rootfs = artifact("rootfs");
    let initrd = artifact("initrd");
    let config = json!({
        "boot-source": {"kernel_image_path": artifact(kernel), "initrd_path": initrd, "boot_args": BOOT_ARGS},
        "drives": [{"drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": true, "is_read_only": true}],
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}
    });
    let ember = Ember::with_config(&dir, &config);

    let banner = ember.expect_line("Linux version 6.1", EARLY_BOOT);
    assert!(banner.contains("SMP"), "{banner}");
    let expected_cmdline =
        format!("Command line: {BOOT_ARGS} root=/dev/vda ro virtio_mmio.device=4K@0xd0001000:5");
    assert_eq!(
        ember.expect_line("Command line: ", EARLY_BOOT),
        expected_cmdline
    );
    ember.expect_line("smpboot: Allowing 2 CPUs", EARLY_BOOT);
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
}

#[test]
fn linux_vmlinux_through_pvh_reports_our_command_line_memory_map_initrd_and_vcpus() {
    boot_linux("kernel");
}

#[test]
fn linux_bzimage_through_the_64bit_boot_protocol_does_the_same() {
    boot_linux("bzimage");
}
