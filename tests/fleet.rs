//! Fleet scale, untimed: thousands of echo-function VMs loaded from one
//! snapshot, all running at once, each answering one invocation over vsock,
//! then all terminated, leaving no process, cgroup or socket behind. CI runs
//! 2,000 (`EMBER_FLEET_VMS` sets how many; `make bench` runs 10,000).

use std::path::PathBuf;

use ember_test_support::fleet::{snapshot, stop, Cgroup, Fleet, Vmm};
use ember_test_support::{artifact, ember_bin, require_kvm, require_root};

/// Guest memory of each VM.
const MEM_MIB: u32 = 64;
/// Threads an idle function VM runs (main, API, vCPU) and a margin.
const TASKS_PER_VM: usize = 6;

/// Makes room for `count` VMs' threads in the PID space (`kernel.pid_max`).
fn make_room_for(count: usize) {
    let path = "/proc/sys/kernel/pid_max";
    let current: usize = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let needed = count * TASKS_PER_VM + 32_768;
    if current < needed {
        std::fs::write(path, needed.to_string()).expect("raise kernel.pid_max");
    }
}

#[test]
fn thousands_of_function_vms_run_at_once_answer_and_leave_nothing_behind() {
    require_kvm();
    require_root();
    let count: usize = std::env::var("EMBER_FLEET_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    make_room_for(count);
    let run = PathBuf::from(format!("/dev/shm/ember-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    let vmm = Vmm::Ember(ember_bin());
    let image = snapshot(
        &vmm,
        &artifact("unikernel-echo"),
        MEM_MIB,
        &run.join("image"),
    );
    let cgroup = Cgroup::new("ember-scale");
    let clones = run.join("clones");
    let fleet = Fleet {
        vmm: &vmm,
        start: &image,
        count,
        concurrency: 8,
        base: &clones,
        cgroup: &cgroup,
        pool: false,
    };

    // Each VM answered once on its way up, and all of them are still there.
    let started = fleet.start().unwrap_or_else(|e| panic!("the fleet: {e}"));
    assert_eq!(started.vms.len(), count);
    assert_eq!(cgroup.processes(), count, "every VM still runs");
    let alive = started
        .vms
        .iter()
        .filter(|vm| PathBuf::from(format!("/proc/{}", vm.pid())).exists())
        .count();
    assert_eq!(alive, count);

    let stopped = stop(started.vms, libc::SIGTERM, 8, &cgroup);
    assert_eq!(stopped.exits.len(), count, "every VM was reaped");
    assert_eq!(
        cgroup.processes(),
        0,
        "no process left in the fleet's cgroup"
    );
    let cgroup_path = cgroup.path().to_path_buf();
    drop(cgroup);
    assert!(!cgroup_path.exists(), "the fleet's cgroup is gone");
    std::fs::remove_dir_all(&run).expect("remove the VMs' directories");
    assert!(!run.exists());
}
