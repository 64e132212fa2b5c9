//! Booting the test unikernels through the API and through `--config-file`,
//! in both boot protocols: console, vCPUs, memory map, block devices, reset.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use ember_test_support::{
    artifact, expected_memory_lines, main_thread_ticks_over, on_pci, require_kvm, Ember, TempDir,
};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(20);

fn boot_via_api(guest: &str, protocol: &str) {
    require_kvm();
    let dir = TempDir::new("api-boot");
    let root = dir.disk("root.img", 64, b"root sector zero");
    let mut ember = Ember::with_api(&dir, &[]);
    let kernel = artifact(guest);
    let args = "console=ttyS0 reboot=k panic=1 pci=off";
    ember.ok(
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": kernel, "boot_args": args}).to_string(),
    );
    ember.ok(
        "PUT",
        "/drives/rootfs",
        &json!({"drive_id": "rootfs", "path_on_host": root, "is_root_device": true, "is_read_only": false}).to_string(),
    );
    ember.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
    );
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);

    ember.expect_line(&format!("EMBER-TEST-GUEST: hello from {protocol}"), BOOT);
    let cmdline = ember.expect_line("cmdline: ", BOOT);
    let devices = if on_pci() {
        ""
    } else {
        " virtio_mmio.device=4K@0xd0001000:5"
    };
    assert_eq!(
        cmdline,
        format!("cmdline: {args} root=/dev/vda rw{devices}")
    );
    assert_eq!(ember.expect_line("cpus: ", BOOT), "cpus: 2");
    ember.expect_line("guest: reset", BOOT);
    let mem = ember.lines_starting("mem: 0x");
    assert_eq!(mem, expected_memory_lines(256));
    assert_eq!(
        ember.wait_exit(BOOT).code(),
        Some(0),
        "a guest reset ends ember cleanly"
    );
}

#[test]
fn linux64_guest_boots_through_the_api() {
    boot_via_api("test-elf", "linux64");
}

#[test]
fn pvh_guest_boots_through_the_api() {
    boot_via_api("test-pvh", "pvh");
}

fn boot_via_config(guest: &str, protocol: &str) {
    require_kvm();
    let dir = TempDir::new("config-boot");
    let config = json!({
        "boot-source": {"kernel_image_path": artifact(guest), "boot_args": "console=ttyS0 ember.echo"},
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        "network-interfaces": []
    });
    let mut ember = Ember::with_config(&dir, &config);
    ember.expect_line(&format!("EMBER-TEST-GUEST: hello from {protocol}"), BOOT);
    assert_eq!(ember.expect_line("cpus: ", BOOT), "cpus: 1");
    assert_eq!(ember.expect_line("blk", BOOT), "blk: none");
    ember.expect_line("echo: ready", BOOT);
    ember.write_stdin(b"hello ember\n");
    ember.expect_line("hello ember", BOOT);
    ember.write_stdin(b"reset\n");
    ember.expect_line("guest: reset", BOOT);
    assert_eq!(ember.wait_exit(BOOT).code(), Some(0));
}

/// A console whose writer went away (stdin at its end, its pipe hung up)
/// costs nothing: ember stops watching it rather than wake for ever, and the
/// guest runs on.
#[test]
fn a_closed_console_input_leaves_ember_idle() {
    require_kvm();
    let dir = TempDir::new("closed-stdin");
    let config = json!({
        "boot-source": {"kernel_image_path": artifact("test-elf"), "boot_args": "console=ttyS0 ember.echo"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}
    });
    let mut ember = Ember::with_config(&dir, &config);
    ember.expect_line("echo: ready", BOOT);
    ember.write_stdin(b"last words\n");
    ember.expect_line("last words", BOOT);
    ember.close_stdin();
    let cpu = main_thread_ticks_over(ember.pid(), Duration::from_secs(1));
    assert!(
        cpu <= 5,
        "ember's event loop used {cpu} clock ticks in 1 s with its stdin closed"
    );
    assert!(
        ember.child.try_wait().unwrap().is_none(),
        "ember exited: {}",
        ember.stderr()
    );
}

/// SIGTERM, a platform's usual stop, ends a VM that has just started as the
/// signal would without a handler: the handler ember has for it (which hastens
/// the VM's teardown, on the event loop's thread) must neither keep ember alive
/// nor trip a seccomp filter (that would be SIGSYS).
#[test]
fn sigterm_ends_a_running_vm_as_the_signal_itself_would() {
    require_kvm();
    let dir = TempDir::new("sigterm");
    let config = json!({
        "boot-source": {"kernel_image_path": artifact("test-elf"), "boot_args": "console=ttyS0 ember.echo"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 64}
    });
    let mut ember = Ember::with_config(&dir, &config);
    ember.expect_line("echo: ready", BOOT);
    let pid = i32::try_from(ember.pid()).unwrap();
    // SAFETY: signals our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = ember.wait_exit(BOOT);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{}", ember.stderr());
}

#[test]
fn linux64_guest_boots_from_a_config_file_and_echoes_input() {
    boot_via_config("test-elf", "linux64");
}

#[test]
fn pvh_guest_boots_from_a_config_file_and_echoes_input() {
    boot_via_config("test-pvh", "pvh");
}

#[test]
fn guest_reads_and_writes_drives_and_read_only_ones_refuse_writes() {
    require_kvm();
    let dir = TempDir::new("drives");
    let root = dir.disk("root.img", 64, b"the root drive");
    let data = dir.disk("data.img", 128, b"second drive says hi");
    let ro = dir.disk("ro.img", 32, b"do not touch me");
    let config = json!({
        "boot-source": {"kernel_image_path": artifact("test-pvh"), "boot_args": "console=ttyS0"},
        "drives": [
            {"drive_id": "data", "path_on_host": data, "is_root_device": false, "is_read_only": false, "cache_type": "Writeback"},
            {"drive_id": "ro", "path_on_host": ro, "is_root_device": false, "is_read_only": true},
            {"drive_id": "rootfs", "path_on_host": root, "is_root_device": true, "is_read_only": false}
        ],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}
    });
    let mut ember = Ember::with_config(&dir, &config);
    ember.expect_line("guest: reset", BOOT);
    assert_eq!(ember.wait_exit(BOOT).code(), Some(0));
    let console = ember.console();
    let line = |prefix: &str| {
        console
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{}", console.join("\n")))
            .clone()
    };

    // The root drive is the first device; the others follow in configuration order.
    for (index, path, sectors, ro) in [(0, &root, 64, 0), (1, &data, 128, 0), (2, &ro, 32, 1)] {
        let meta = std::fs::metadata(path).unwrap();
        let id: String = format!("{}{}{}", meta.dev(), meta.rdev(), meta.ino())
            .chars()
            .take(20)
            .collect();
        assert_eq!(
            line(&format!("blk{index}: id=")),
            format!("blk{index}: id={id} sectors={sectors} ro={ro}")
        );
    }
    assert!(line("blk1: sector0=").starts_with("blk1: sector0=second drive says hi"));
    assert_eq!(line("blk1: write status="), "blk1: write status=0");
    assert_eq!(line("blk1: flush status="), "blk1: flush status=0");
    assert_eq!(
        line("blk1: beyond-end status="),
        "blk1: beyond-end status=1"
    );

    let written = std::fs::read(&data).unwrap();
    let expected = b"ember-test-guest wrote blk1 sector 1\n";
    assert_eq!(
        &written[512..512 + expected.len()],
        expected,
        "the guest's write is in the host file"
    );
    assert!(written[512 + expected.len()..1024].iter().all(|&b| b == 0));
    assert_eq!(
        &written[..20],
        b"second drive says hi",
        "sector 0 untouched"
    );

    assert_eq!(
        line("blk2: write status="),
        "blk2: write status=1",
        "read-only drive refuses writes"
    );
    let untouched = std::fs::read(&ro).unwrap();
    assert_eq!(&untouched[..15], b"do not touch me");
    assert!(
        untouched[15..].iter().all(|&b| b == 0),
        "nothing written to the read-only file"
    );
}

#[test]
fn paused_guest_stops_and_resumed_guest_goes_on() {
    require_kvm();
    let dir = TempDir::new("pause");
    let mut ember = Ember::with_api(&dir, &[]);
    ember.ok(
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": artifact("test-elf"), "boot_args": "console=ttyS0 ember.echo"}).to_string(),
    );
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    ember.expect_line("echo: ready", BOOT);
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let (_, info) = ember.api("GET", "/", "");
    assert!(info.contains(r#""state":"Paused""#), "{info}");

    // Input typed while paused is only echoed after resume.
    ember.write_stdin(b"while paused\n");
    assert!(ember
        .wait_line(Duration::from_millis(300), |l| l == "while paused")
        .is_none());
    ember.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    ember.expect_line("while paused", BOOT);
    let (_, info) = ember.api("GET", "/", "");
    assert!(info.contains(r#""state":"Running""#), "{info}");

    ember.ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    ember.write_stdin(b"reset\n");
    assert_eq!(ember.wait_exit(BOOT).code(), Some(0));
}

#[test]
fn largest_machine_sees_32_vcpus_and_memory_above_4g() {
    require_kvm();
    let dir = TempDir::new("large");
    let config = json!({
        "boot-source": {"kernel_image_path": artifact("test-pvh"), "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 32, "mem_size_mib": 4096}
    });
    let mut ember = Ember::with_config(&dir, &config);
    assert_eq!(ember.expect_line("cpus: ", BOOT), "cpus: 32");
    ember.expect_line("guest: reset", BOOT);
    let mem = ember.lines_starting("mem: 0x");
    assert_eq!(mem, expected_memory_lines(4096));
    assert_eq!(ember.wait_exit(BOOT).code(), Some(0));
}

/// The microseconds a `blk<index>: read <KiB> KiB in <us> us` line reports.
fn read_micros(ember: &Ember, index: usize) -> u64 {
    let prefix = format!("blk{index}: read ");
    let line = ember.expect_line(&prefix, BOOT);
    line.split_whitespace()
        .nth(5)
        .and_then(|us| us.parse().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"))
}

#[test]
fn a_rate_limited_drive_reads_no_faster_than_its_limit_and_its_neighbour_is_not_slowed() {
    require_kvm();
    let dir = TempDir::new("drive-limits");
    let limited = dir.disk("limited.img", 4096, b"limited");
    let free = dir.disk("free.img", 4096, b"free");
    // 128 KiB per 125 ms: 1 MiB/s, starting with a full bucket.
    let config = json!({
        "boot-source": {
            "kernel_image_path": artifact("test-pvh"),
            "boot_args": "console=ttyS0 ember.blkread=2048"
        },
        "drives": [
            {"drive_id": "limited", "path_on_host": limited, "is_root_device": true, "is_read_only": true,
             "rate_limiter": {"bandwidth": {"size": 131072, "refill_time": 125}}},
            {"drive_id": "free", "path_on_host": free, "is_root_device": false, "is_read_only": true,
             "rate_limiter": null}
        ],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}
    });
    let mut ember = Ember::with_config(&dir, &config);
    let limited_us = read_micros(&ember, 0);
    let free_us = read_micros(&ember, 1);
    assert_eq!(ember.wait_exit(BOOT).code(), Some(0));
    // 2 MiB, the first 128 KiB from the full bucket: at least 1.875 s at the
    // limit (5% off for the guest's clock against the host's).
    let floor_us = 1_875_000 * 95 / 100;
    assert!(
        limited_us >= floor_us,
        "2 MiB read in {limited_us} us through a 1 MiB/s limit"
    );
    assert!(
        free_us < floor_us,
        "the unlimited drive took {free_us} us, as long as the limited one must"
    );
}

/// A config file's `pci` section (ember's own) puts the devices on PCI as
/// `--enable-pci` does: no virtio-mmio entries on the command line, the ECAM
/// in the memory map, and the guest finds and uses its drive on PCI.
#[test]
fn a_config_file_can_put_the_devices_on_pci() {
    require_kvm();
    let dir = TempDir::new("config-pci");
    let disk = dir.disk("disk.img", 8, b"a drive on pci");
    let config = json!({
        "boot-source": {"kernel_image_path": artifact("test-elf"), "boot_args": "console=ttyS0"},
        "drives": [{"drive_id": "data", "path_on_host": disk, "is_root_device": false, "is_read_only": false}],
        "pci": {"enabled": true}
    });
    let mut ember = Ember::with_config(&dir, &config);
    assert_eq!(
        ember.expect_line("cmdline: ", BOOT),
        "cmdline: console=ttyS0"
    );
    ember.expect_line("mem: 0xe0000000-0xe00fffff type=2", BOOT);
    let sector = ember.expect_line("blk0: sector0=", BOOT);
    assert!(
        sector.starts_with("blk0: sector0=a drive on pci"),
        "{sector}"
    );
    ember.expect_line("guest: reset", BOOT);
    assert_eq!(ember.wait_exit(BOOT).code(), Some(0));
}
