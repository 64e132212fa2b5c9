//! The controller's state rules, every request in every state, on a fake
//! launcher: no KVM involved.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use serde_json::json;
use vmm_sys_util::tempdir::TempDir;

use super::*;
use crate::config::{DriveConfig, DriveUpdate, RateLimiterConfig, VsockConfig};

/// What the fake VM and launcher were asked to do, in order.
type Log = Rc<RefCell<Vec<String>>>;

struct FakeVm {
    paused: bool,
    log: Log,
}

impl RunningVm for FakeVm {
    fn is_paused(&self) -> bool {
        self.paused
    }

    fn pause(&mut self) -> Result<(), vmm::Error> {
        self.paused = true;
        self.log.borrow_mut().push("pause".into());
        Ok(())
    }

    fn resume(&mut self) -> Result<(), vmm::Error> {
        self.paused = false;
        self.log.borrow_mut().push("resume".into());
        Ok(())
    }

    fn send_ctrl_alt_del(&self) -> Result<(), vmm::Error> {
        self.log.borrow_mut().push("ctrl-alt-del".into());
        Ok(())
    }

    fn change_device(&self, change: &DeviceChange) -> Result<(), vmm::Error> {
        let entry = match change {
            DeviceChange::Drive {
                id,
                file,
                rate_limiter,
            } => format!(
                "update {id} {:?} limited {}",
                file.as_ref().map(|f| f.0.display().to_string()),
                rate_limiter.is_some()
            ),
            DeviceChange::Net { id, .. } => format!("update {id} limiters"),
            DeviceChange::BalloonTarget { amount_mib } => format!("balloon to {amount_mib} MiB"),
            DeviceChange::BalloonStatsInterval { seconds } => format!("balloon stats {seconds}s"),
            DeviceChange::BalloonHinting(start) => format!("balloon hinting {start:?}"),
        };
        self.log.borrow_mut().push(entry);
        Ok(())
    }

    fn balloon_status(&self) -> Result<BalloonStatus, vmm::Error> {
        let mut stats = crate::devices::virtio::balloon::Stats::default();
        stats[4] = Some(4096);
        let mut hinting = crate::devices::virtio::balloon::Hinting::default();
        hinting.start(true);
        Ok(BalloonStatus {
            target_pages: 512,
            actual_pages: 256,
            stats,
            hinting,
        })
    }

    fn snapshot(
        &self,
        config: &VmConfig,
        params: &SnapshotCreateConfig,
    ) -> Result<(), persist::Error> {
        let cid = config.vsock.as_ref().map(|v| v.guest_cid);
        self.log
            .borrow_mut()
            .push(format!("snapshot {} cid {cid:?}", params.snapshot_path));
        Ok(())
    }
}

struct FakeLauncher {
    log: Log,
    fail_start: bool,
    /// What `load` says the snapshot held.
    saved: VmConfig,
}

impl Launcher for FakeLauncher {
    type Vm = FakeVm;

    fn get_ready(&mut self, machine: &MachineConfig) {
        self.log
            .borrow_mut()
            .push(format!("ready {} vCPUs", machine.vcpu_count));
    }

    fn prepare(&mut self, machine: &MachineConfig) {
        self.log
            .borrow_mut()
            .push(format!("prepare {} MiB", machine.mem_size_mib));
    }

    fn enable_pci(&mut self) {
        self.log.borrow_mut().push("pci".into());
    }

    fn start(&mut self, resources: &VmResources) -> Result<FakeVm, builder::Error> {
        if self.fail_start || resources.boot_source.is_none() {
            return Err(builder::Error::NoBootSource);
        }
        self.log.borrow_mut().push("start".into());
        Ok(FakeVm {
            paused: false,
            log: self.log.clone(),
        })
    }

    fn load(
        &mut self,
        params: &SnapshotLoadConfig,
        mmds: SharedMmds,
    ) -> Result<(FakeVm, VmResources), persist::Error> {
        self.log
            .borrow_mut()
            .push(format!("load {}", params.snapshot_path));
        let vm = FakeVm {
            paused: !params.resume_vm,
            log: self.log.clone(),
        };
        Ok((
            vm,
            VmResources {
                mmds,
                ..VmResources::from_config(self.saved.clone())
            },
        ))
    }
}

struct Fixture {
    dir: TempDir,
    log: Log,
    controller: Controller<FakeLauncher>,
}

impl Fixture {
    fn new() -> Self {
        let log = Log::default();
        let saved = VmConfig {
            machine_config: Some(MachineConfig {
                mem_size_mib: 256,
                ..Default::default()
            }),
            vsock: Some(vsock()),
            ..Default::default()
        };
        let launcher = FakeLauncher {
            log: log.clone(),
            fail_start: false,
            saved,
        };
        Fixture {
            dir: TempDir::new().expect("a temporary directory"),
            log,
            controller: Controller::new("vm-1".into(), launcher),
        }
    }

    /// A file in the fixture's directory, for paths the controller checks.
    fn file(&self, name: &str) -> String {
        let path: PathBuf = self.dir.as_path().join(name);
        std::fs::write(&path, b"x").expect("a scratch file");
        path.display().to_string()
    }

    fn handle(&mut self, request: Request) -> Result<Response, Error> {
        self.controller.handle(request)
    }

    fn log(&self) -> Vec<String> {
        self.log.borrow().clone()
    }

    fn state(&mut self) -> InstanceState {
        match self.handle(Request::GetInstanceInfo) {
            Ok(Response::InstanceInfo(info)) => info.state,
            other => panic!("GET / answered {other:?}"),
        }
    }

    fn boot(&mut self) {
        let kernel = self.file("vmlinux");
        self.handle(boot_source(&kernel)).expect("boot source");
        self.handle(put_vsock()).expect("vsock");
        self.handle(Request::StartInstance).expect("InstanceStart");
    }
}

fn boot_source(kernel: &str) -> Request {
    Request::PutBootSource(BootSourceConfig {
        kernel_image_path: kernel.into(),
        initrd_path: None,
        boot_args: None,
    })
}

fn machine(mem_size_mib: u64) -> Request {
    Request::PutMachineConfig(MachineConfig {
        mem_size_mib,
        ..Default::default()
    })
}

fn put_vsock() -> Request {
    Request::PutDevice(DeviceConfig::Vsock(vsock()))
}

fn put_drive(id: &str, path: &str, root: bool) -> Request {
    Request::PutDevice(DeviceConfig::Drive(drive(id, path, root)))
}

fn vsock() -> VsockConfig {
    VsockConfig {
        guest_cid: 3,
        uds_path: "v.sock".into(),
        vsock_id: None,
    }
}

fn drive(id: &str, path: &str, root: bool) -> DriveConfig {
    serde_json::from_value(json!({
        "drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": false
    }))
    .expect("a drive")
}

fn snapshot_load() -> Request {
    Request::LoadSnapshot(
        serde_json::from_value(json!({"snapshot_path": "s", "mem_file_path": "m"}))
            .expect("a load request"),
    )
}

fn snapshot_create() -> Request {
    Request::CreateSnapshot(
        serde_json::from_value(json!({"snapshot_path": "s", "mem_file_path": "m"}))
            .expect("a create request"),
    )
}

/// Requests whose answer does not depend on the state, with valid bodies.
fn any_state_requests() -> Vec<Request> {
    vec![
        Request::GetInstanceInfo,
        Request::GetVersion,
        Request::GetMachineConfig,
        Request::GetVmConfig,
        Request::PutLogger(LoggerConfig {
            log_path: None,
            level: None,
            show_level: None,
            show_log_origin: None,
            module: None,
        }),
        Request::PutFunction(FunctionConfig::default()),
        Request::PutMmds(json!({"latest": {"meta-data": {}}})),
        Request::PatchMmds(json!({"latest": {"user-data": "x"}})),
        Request::GetMmds,
    ]
}

#[test]
fn every_request_before_start_is_served_or_refused_as_before_start() {
    let mut fx = Fixture::new();
    for request in any_state_requests() {
        assert!(fx.handle(request.clone()).is_ok(), "{request:?}");
    }
    let refused = [
        Request::GetInvocationTarget,
        Request::UpdateDevice(DeviceUpdate::Drive(DriveUpdate {
            drive_id: "root".into(),
            path_on_host: None,
            rate_limiter: None,
        })),
        Request::SendCtrlAltDel,
        Request::Pause,
        Request::Resume,
        snapshot_create(),
    ];
    for request in refused {
        let error = fx
            .handle(request.clone())
            .expect_err("refused before start");
        assert!(matches!(error, Error::BeforeStart), "{request:?}: {error}");
    }
    let kernel = fx.file("vmlinux");
    let disk = fx.file("disk");
    let configuring = [
        boot_source(&kernel),
        Request::PutMachineConfig(MachineConfig::default()),
        Request::PatchMachineConfig(MachineConfigUpdate::default()),
        put_drive("root", &disk, true),
        put_vsock(),
    ];
    for request in configuring {
        assert_eq!(fx.handle(request).ok(), Some(Response::NoContent));
    }
    assert_eq!(fx.state(), InstanceState::NotStarted);
    assert!(fx.log().iter().all(|entry| entry.starts_with("prepare")));
}

#[test]
fn every_request_after_start_is_served_or_refused_as_after_start() {
    let mut fx = Fixture::new();
    fx.boot();
    assert_eq!(fx.state(), InstanceState::Running);
    for request in any_state_requests() {
        assert!(fx.handle(request.clone()).is_ok(), "{request:?}");
    }
    let kernel = fx.file("vmlinux");
    let disk = fx.file("disk");
    let refused = [
        boot_source(&kernel),
        Request::PutMachineConfig(MachineConfig::default()),
        Request::PatchMachineConfig(MachineConfigUpdate::default()),
        put_drive("root", &disk, true),
        put_vsock(),
        snapshot_load(),
    ];
    for request in refused {
        let error = fx.handle(request.clone()).expect_err("refused after start");
        assert!(matches!(error, Error::AfterStart), "{request:?}: {error}");
    }
    let error = fx
        .handle(Request::StartInstance)
        .expect_err("a second start");
    assert!(matches!(error, Error::AlreadyStarted), "{error}");
    assert!(matches!(
        fx.handle(Request::GetInvocationTarget),
        Ok(Response::Invocation(InvocationTarget { port: 1024, .. }))
    ));
}

#[test]
fn runtime_actions_reach_the_vm_and_pause_shows_in_the_state() {
    let mut fx = Fixture::new();
    fx.boot();
    for request in [Request::SendCtrlAltDel, Request::Pause] {
        assert_eq!(fx.handle(request).ok(), Some(Response::NoContent));
    }
    assert_eq!(fx.state(), InstanceState::Paused);
    assert_eq!(fx.handle(snapshot_create()).ok(), Some(Response::NoContent));
    assert_eq!(fx.handle(Request::Resume).ok(), Some(Response::NoContent));
    assert_eq!(fx.state(), InstanceState::Running);
    let log = fx.log();
    let actions: Vec<&str> = log
        .iter()
        .map(String::as_str)
        .skip_while(|entry| *entry != "start")
        .collect();
    assert_eq!(
        actions,
        [
            "start",
            "ctrl-alt-del",
            "pause",
            "snapshot s cid Some(3)",
            "resume"
        ]
    );
}

#[test]
fn a_drive_update_needs_a_known_drive_and_then_reaches_the_vm() {
    let mut fx = Fixture::new();
    let disk = fx.file("disk");
    fx.handle(put_drive("data", &disk, false)).expect("a drive");
    fx.boot();
    let update = |id: &str, path: Option<&str>| {
        Request::UpdateDevice(DeviceUpdate::Drive(DriveUpdate {
            drive_id: id.into(),
            path_on_host: path.map(str::to_string),
            rate_limiter: None,
        }))
    };
    let error = fx
        .handle(update("nope", Some("/x")))
        .expect_err("an unknown drive");
    assert!(
        matches!(error, Error::Resources(resources::Error::NoSuchDrive(_))),
        "{error}"
    );
    assert_eq!(
        fx.handle(update("data", Some("/new"))).ok(),
        Some(Response::NoContent)
    );
    assert_eq!(
        fx.log().last().map(String::as_str),
        Some(r#"update data Some("/new") limited false"#)
    );
    let limits: RateLimiterConfig =
        serde_json::from_str(r#"{"ops": {"size": 100, "refill_time": 1000}}"#).unwrap();
    let limit = Request::UpdateDevice(DeviceUpdate::Drive(DriveUpdate {
        drive_id: "data".into(),
        path_on_host: None,
        rate_limiter: Some(limits),
    }));
    assert_eq!(fx.handle(limit).ok(), Some(Response::NoContent));
    assert_eq!(
        fx.log().last().map(String::as_str),
        Some("update data None limited true")
    );
    match fx.handle(Request::GetVmConfig) {
        Ok(Response::VmConfig(config)) => {
            assert_eq!(config.drives[0].path_on_host.as_deref(), Some("/new"));
            assert_eq!(config.drives[0].rate_limiter, Some(limits));
        }
        other => panic!("GET /vm/config answered {other:?}"),
    }
}

#[test]
fn a_failed_start_leaves_the_vm_configurable_and_readies_the_next_attempt() {
    let mut fx = Fixture::new();
    let error = fx
        .handle(Request::StartInstance)
        .expect_err("no boot source");
    assert!(
        matches!(error, Error::Start(builder::Error::NoBootSource)),
        "{error}"
    );
    assert_eq!(fx.state(), InstanceState::NotStarted);
    assert_eq!(fx.log(), ["prepare 128 MiB"]);
    let kernel = fx.file("vmlinux");
    assert_eq!(
        fx.handle(boot_source(&kernel)).ok(),
        Some(Response::NoContent)
    );
}

#[test]
fn a_machine_change_readies_a_vm_of_the_new_size() {
    let mut fx = Fixture::new();
    let update = MachineConfigUpdate {
        mem_size_mib: Some(512),
        ..Default::default()
    };
    fx.handle(Request::PatchMachineConfig(update))
        .expect("a patch");
    assert_eq!(fx.log(), ["prepare 512 MiB"]);
    let invalid = MachineConfigUpdate {
        vcpu_count: Some(0),
        ..Default::default()
    };
    let error = fx
        .handle(Request::PatchMachineConfig(invalid))
        .expect_err("zero vCPUs");
    assert!(matches!(error, Error::Resources(_)), "{error}");
    assert_eq!(fx.log().len(), 1, "an invalid change readies nothing");
}

#[test]
fn a_snapshot_load_only_comes_before_boot_configuration() {
    let mut fx = Fixture::new();
    let kernel = fx.file("vmlinux");
    fx.handle(boot_source(&kernel)).expect("boot source");
    let error = fx.handle(snapshot_load()).expect_err("after configuration");
    assert!(matches!(error, Error::LoadAfterConfig), "{error}");
    assert_eq!(fx.state(), InstanceState::NotStarted);
}

#[test]
fn a_snapshot_load_takes_the_saved_configuration_and_keeps_the_logger() {
    let mut fx = Fixture::new();
    let logger = LoggerConfig {
        log_path: None,
        level: None,
        show_level: Some(true),
        show_log_origin: None,
        module: None,
    };
    fx.handle(Request::PutLogger(logger.clone()))
        .expect("logger");
    fx.handle(Request::PutMmds(json!({"kept": true})))
        .expect("metadata");
    assert_eq!(fx.handle(snapshot_load()).ok(), Some(Response::NoContent));
    assert_eq!(
        fx.handle(Request::GetMmds).ok(),
        Some(Response::Mmds(json!({"kept": true}))),
        "the metadata is the platform's, not the snapshot's"
    );
    assert_eq!(fx.state(), InstanceState::Paused);
    match fx.handle(Request::GetVmConfig) {
        Ok(Response::VmConfig(config)) => {
            assert_eq!(config.machine_config.map(|m| m.mem_size_mib), Some(256));
            assert_eq!(config.vsock, Some(vsock()));
            assert_eq!(config.logger, Some(logger));
        }
        other => panic!("GET /vm/config answered {other:?}"),
    }
    assert_eq!(fx.controller.vsock_socket(), Some("v.sock"));
}

#[test]
fn the_mmds_data_store_is_served_in_every_state_within_its_limit() {
    let mut fx = Fixture::new();
    fx.controller.set_mmds_size_limit(16);
    let error = fx
        .handle(Request::PatchMmds(json!({"a": 1})))
        .expect_err("nothing to patch yet");
    assert!(
        matches!(error, Error::Mmds(mmds::Error::NotInitialized)),
        "{error}"
    );
    assert_eq!(
        fx.handle(Request::GetMmds).ok(),
        Some(Response::Mmds(json!({})))
    );
    fx.boot();
    fx.handle(Request::PutMmds(json!({"a": 1})))
        .expect("7 bytes");
    let error = fx
        .handle(Request::PatchMmds(json!({"b": "too long"})))
        .expect_err("over 16 bytes");
    assert!(
        matches!(error, Error::Mmds(mmds::Error::TooLarge { .. })),
        "{error}"
    );
    assert_eq!(
        fx.handle(Request::GetMmds).ok(),
        Some(Response::Mmds(json!({"a": 1})))
    );
}

#[test]
fn invocations_need_a_vsock_device() {
    let mut fx = Fixture::new();
    let kernel = fx.file("vmlinux");
    fx.handle(boot_source(&kernel)).expect("boot source");
    fx.handle(Request::StartInstance).expect("InstanceStart");
    let error = fx
        .handle(Request::GetInvocationTarget)
        .expect_err("no vsock");
    assert!(matches!(error, Error::NoVsock), "{error}");
}

#[test]
fn a_config_file_with_a_section_ember_lacks_is_refused_whole() {
    let mut fx = Fixture::new();
    let config: VmConfig =
        serde_json::from_value(json!({"memory-hotplug": {"total_size_mib": 1024}}))
            .expect("a config");
    let error = fx.controller.apply_config(config).expect_err("hotplug");
    assert!(
        matches!(error, Error::Unsupported("memory-hotplug")),
        "{error}"
    );
}

#[test]
fn a_config_files_pci_section_puts_the_devices_on_pci_and_is_not_written_back() {
    for (section, pci) in [
        (json!({"enabled": true}), true),
        (json!({"enabled": false}), false),
    ] {
        let mut fx = Fixture::new();
        let config: VmConfig = serde_json::from_value(json!({ "pci": section })).expect("a config");
        fx.controller.apply_config(config).expect("applied");
        assert_eq!(fx.log().contains(&"pci".to_string()), pci);
    }
    let config: VmConfig = serde_json::from_value(json!({"pci": {"enabled": true}})).unwrap();
    let written = serde_json::to_value(&config).unwrap();
    assert!(written.get("pci").is_none(), "{written}");
    assert!(serde_json::from_value::<VmConfig>(json!({"pci": {"on": true}})).is_err());
}

/// A semantic version as clients parse one: three numbers without leading
/// zeros, then an optional pre-release or build suffix.
fn is_semver(text: &str) -> bool {
    let core = text.split(['-', '+']).next().unwrap_or_default();
    let numbers: Vec<&str> = core.split('.').collect();
    numbers.len() == 3
        && numbers.iter().all(|n| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n.len() == 1 || !n.starts_with('0'))
        })
}

#[test]
fn version_and_instance_info_answer_in_firecrackers_shape() {
    let mut fx = Fixture::new();
    let Ok(Response::Version(version)) = fx.handle(Request::GetVersion) else {
        panic!("GET /version answered something else");
    };
    let version = serde_json::to_value(&version).expect("JSON");
    assert_eq!(
        version,
        json!({"firecracker_version": VERSION, "app_name": "ember", "vmm_version": VERSION})
    );
    assert!(is_semver(VERSION), "{VERSION}");
    assert!(!is_semver("v0.1.0") && !is_semver("0.1") && !is_semver("01.0.0"));

    fx.boot();
    let Ok(Response::InstanceInfo(info)) = fx.handle(Request::GetInstanceInfo) else {
        panic!("GET / answered something else");
    };
    assert_eq!(
        serde_json::to_value(&info).expect("JSON"),
        json!({"app_name": "ember", "id": "vm-1", "state": "Running", "vmm_version": VERSION})
    );
}

fn balloon(amount_mib: u32, stats_polling_interval_s: u16) -> Request {
    Request::PutDevice(DeviceConfig::Balloon(config::BalloonConfig {
        amount_mib,
        deflate_on_oom: false,
        stats_polling_interval_s,
        free_page_hinting: false,
        free_page_reporting: false,
    }))
}

#[test]
fn the_balloon_is_configured_before_boot_and_steered_after() {
    let mut fx = Fixture::new();
    let no_balloon = fx.handle(Request::GetBalloon).expect_err("no balloon");
    assert!(
        no_balloon.to_string().contains("PUT /balloon"),
        "{no_balloon}"
    );
    let too_big = fx
        .handle(balloon(129, 1))
        .expect_err("bigger than the guest");
    assert!(too_big.to_string().contains("128 MiB"), "{too_big}");
    fx.handle(balloon(64, 1)).expect("balloon");
    let shrink = Request::PatchMachineConfig(MachineConfigUpdate {
        mem_size_mib: Some(32),
        ..Default::default()
    });
    assert!(fx.handle(shrink).is_err(), "the balloon must still fit");
    fx.handle(Request::PatchBalloon(BalloonUpdate { amount_mib: 32 }))
        .expect("pre-boot patch");
    assert!(matches!(
        fx.handle(Request::GetBalloon),
        Ok(Response::Balloon(config::BalloonConfig {
            amount_mib: 32,
            ..
        }))
    ));
    assert!(matches!(
        fx.handle(Request::GetBalloonStats),
        Err(Error::BeforeStart)
    ));

    fx.boot();
    fx.handle(Request::PatchBalloon(BalloonUpdate { amount_mib: 100 }))
        .expect("inflate");
    fx.handle(Request::PatchBalloonStats(BalloonStatsUpdate {
        stats_polling_interval_s: 5,
    }))
    .expect("a new interval");
    let off = BalloonStatsUpdate {
        stats_polling_interval_s: 0,
    };
    let toggled = fx
        .handle(Request::PatchBalloonStats(off))
        .expect_err("statistics stay on");
    assert!(
        toggled.to_string().contains("cannot be turned on or off"),
        "{toggled}"
    );
    let log = fx.log();
    assert!(log.contains(&"balloon to 100 MiB".to_string()), "{log:?}");
    assert!(log.contains(&"balloon stats 5s".to_string()), "{log:?}");
    let no_hinting = fx.handle(Request::StopHinting).expect_err("not configured");
    assert!(
        no_hinting.to_string().contains("not enabled"),
        "{no_hinting}"
    );
    match fx.handle(Request::GetBalloonStats) {
        Ok(Response::BalloonStats(stats)) => {
            assert_eq!((stats.target_mib, stats.actual_mib), (2, 1));
            assert_eq!(stats.reported.get("free_memory"), Some(&json!(4096)));
            assert_eq!(stats.reported.get("swap_in"), None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn start_up_readies_vcpu_threads_and_only_a_boot_readies_a_vm() {
    let mut fx = Fixture::new();
    fx.controller.get_ready();
    fx.handle(snapshot_load()).expect("a load");
    assert_eq!(fx.log(), ["ready 1 vCPUs", "load s"]);

    let mut fx = Fixture::new();
    fx.controller.get_ready();
    let kernel = fx.file("vmlinux");
    fx.handle(boot_source(&kernel)).expect("a boot source");
    fx.handle(machine(64)).expect("a machine configuration");
    fx.handle(Request::StartInstance).expect("a boot");
    assert_eq!(fx.log(), ["ready 1 vCPUs", "prepare 64 MiB", "start"]);
}

/// A boot source before any machine configuration readies nothing: the
/// default machine may still change, and its VM would be thrown away. Once
/// the machine is given, a boot source readies it (the launcher keeps a VM
/// that fits); without one, InstanceStart does.
#[test]
fn a_vm_is_readied_once_for_the_machine_given_whatever_the_order() {
    let mut fx = Fixture::new();
    let kernel = fx.file("vmlinux");
    fx.handle(boot_source(&kernel)).expect("a boot source");
    fx.handle(machine(64)).expect("a machine configuration");
    fx.handle(boot_source(&kernel))
        .expect("a boot source again");
    fx.handle(Request::StartInstance).expect("a boot");
    assert_eq!(fx.log(), ["prepare 64 MiB", "prepare 64 MiB", "start"]);

    let mut fx = Fixture::new();
    fx.handle(boot_source(&kernel)).expect("a boot source");
    fx.handle(Request::StartInstance).expect("a boot");
    assert_eq!(fx.log(), ["start"]);
}
