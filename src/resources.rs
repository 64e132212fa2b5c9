//! Everything configured before InstanceStart, in one value: what the API and
//! `--config-file` set piece by piece, and what the builder takes whole.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use crate::config::{
    self, BalloonConfig, BalloonStatsUpdate, BalloonUpdate, BootSourceConfig, DeviceConfig,
    DeviceUpdate, DriveConfig, EntropyConfig, FunctionConfig, LoggerConfig, MachineConfig,
    MachineConfigUpdate, MmdsConfig, NetworkInterfaceConfig, RateLimiterConfig, VmConfig,
    VsockConfig,
};
use crate::devices::virtio::net::tap::{self, OpenTaps, Tap};
use crate::mmds::SharedMmds;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request body that is well-formed but not valid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// A file the configuration names that ember cannot use.
    #[error("{0}")]
    File(String),
    /// Firecracker allows one root device per VM.
    #[error("a root block device already exists: '{0}'")]
    SecondRoot(String),
    /// An update for a drive the VM does not have.
    #[error("no drive with id '{0}'")]
    NoSuchDrive(String),
    /// An update or override for an interface the VM does not have.
    #[error("no network interface with id '{0}'")]
    NoSuchInterface(String),
    /// Two interfaces on one TAP.
    #[error("network interface '{0}': TAP '{1}' is already used by interface '{2}'")]
    TapInUse(String, String, String),
    /// Two interfaces with one MAC address.
    #[error("network interface '{0}': guest_mac {1} is already used by interface '{2}'")]
    MacInUse(String, String, String),
    /// A TAP that cannot be opened.
    #[error("network interface '{0}': {1}")]
    Tap(String, tap::Error),
    /// A balloon request without a balloon.
    #[error("no balloon device: PUT /balloon before InstanceStart")]
    NoBalloon,
    /// A hinting request for a balloon configured without hinting.
    #[error("free page hinting is not enabled: configure the balloon with free_page_hinting")]
    NoHinting,
    /// Statistics switched on or off after boot, which Firecracker refuses too.
    #[error("balloon statistics cannot be turned on or off after InstanceStart: set stats_polling_interval_s when the balloon is configured")]
    StatsToggle,
    /// MMDS configured on an interface the VM does not have.
    #[error("mmds-config: no network interface with id '{0}'")]
    MmdsInterface(String),
}

/// What a running VM's devices must do for a [`DeviceUpdate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    /// Drive `id` gets another backing file (its guest hears of the new
    /// size) and/or new rate limits.
    Drive {
        id: String,
        file: Option<(PathBuf, bool)>,
        rate_limiter: Option<RateLimiterConfig>,
    },
    /// Interface `id` gets new rate limits.
    Net {
        id: String,
        rx_rate_limiter: Option<RateLimiterConfig>,
        tx_rate_limiter: Option<RateLimiterConfig>,
    },
    /// The balloon gets a new target, which its guest hears of.
    BalloonTarget { amount_mib: u32 },
    /// The balloon polls statistics at a new interval.
    BalloonStatsInterval { seconds: u16 },
    /// A free page hinting run starts (`Some`, with whether the guest's STOP
    /// ends it) or ends (`None`).
    BalloonHinting(Option<bool>),
}

/// The microVM's configuration, as the pre-boot requests leave it.
#[derive(Debug, Clone, Default)]
pub struct VmResources {
    pub boot_source: Option<BootSourceConfig>,
    pub machine: MachineConfig,
    pub drives: Vec<DriveConfig>,
    pub vsock: Option<VsockConfig>,
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    pub entropy: Option<EntropyConfig>,
    pub balloon: Option<BalloonConfig>,
    pub mmds_config: Option<MmdsConfig>,
    pub function: FunctionConfig,
    pub logger: Option<LoggerConfig>,
    /// The interfaces' TAPs, opened when they were put.
    pub open_taps: OpenTaps,
    /// The metadata service with its document: the document is not part of
    /// the VM's configuration (`GET /vm/config` and snapshots leave it out,
    /// as Firecracker's do).
    pub mmds: SharedMmds,
}

/// Checks that `path` names a file ember can open, for an early, precise 400.
fn check_file(what: &str, path: &str) -> Result<(), Error> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || m.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(Error::File(format!(
            "{what} '{path}' is not a regular file"
        ))),
        Err(e) => Err(Error::File(format!("cannot open {what} '{path}': {e}"))),
    }
}

impl VmResources {
    /// The resources a saved configuration describes (a snapshot's).
    pub fn from_config(config: VmConfig) -> Self {
        VmResources {
            boot_source: config.boot_source,
            machine: config.machine_config.unwrap_or_default(),
            drives: config.drives,
            vsock: config.vsock,
            network_interfaces: config.network_interfaces,
            entropy: config.entropy,
            balloon: config.balloon,
            mmds_config: config.mmds_config,
            function: config.function.unwrap_or_default(),
            logger: config.logger,
            open_taps: OpenTaps::default(),
            mmds: SharedMmds::default(),
        }
    }

    /// The configuration as `GET /vm/config` shows it and snapshots keep it.
    pub fn vm_config(&self) -> VmConfig {
        VmConfig {
            boot_source: self.boot_source.clone(),
            drives: self.drives.clone(),
            machine_config: Some(self.machine.clone()),
            logger: self.logger.clone(),
            vsock: self.vsock.clone(),
            network_interfaces: self.network_interfaces.clone(),
            entropy: self.entropy.clone(),
            balloon: self.balloon,
            mmds_config: self.mmds_config.clone(),
            function: Some(self.function.clone()),
            ..Default::default()
        }
    }

    /// Whether anything only a boot uses is configured, which a snapshot
    /// load would silently replace.
    pub fn has_boot_devices(&self) -> bool {
        self.boot_source.is_some()
            || !self.drives.is_empty()
            || self.vsock.is_some()
            || !self.network_interfaces.is_empty()
            || self.entropy.is_some()
            || self.balloon.is_some()
    }

    /// Adds or replaces a device.
    pub fn put_device(&mut self, device: DeviceConfig) -> Result<(), Error> {
        match device {
            DeviceConfig::Drive(drive) => self.put_drive(drive),
            DeviceConfig::Vsock(vsock) => self.set_vsock(vsock),
            DeviceConfig::Net(net) => self.put_net(net),
            DeviceConfig::Entropy(entropy) => {
                self.entropy = Some(entropy);
                Ok(())
            }
            DeviceConfig::Balloon(balloon) => {
                balloon.validate(&self.machine)?;
                self.balloon = Some(balloon);
                Ok(())
            }
        }
    }

    /// Checks `update` against the configuration and says what the running
    /// VM's devices must do for it, if anything.
    pub fn device_change(&self, update: &DeviceUpdate) -> Result<Option<DeviceChange>, Error> {
        match update {
            DeviceUpdate::Drive(update) => {
                let drive = self
                    .drives
                    .iter()
                    .find(|d| d.drive_id == update.drive_id)
                    .ok_or_else(|| Error::NoSuchDrive(update.drive_id.clone()))?;
                let file = update
                    .path_on_host
                    .as_ref()
                    .map(|path| (PathBuf::from(path), drive.is_read_only));
                Ok(
                    (file.is_some() || update.rate_limiter.is_some()).then(|| {
                        DeviceChange::Drive {
                            id: drive.drive_id.clone(),
                            file,
                            rate_limiter: update.rate_limiter,
                        }
                    }),
                )
            }
            DeviceUpdate::Net(update) => {
                self.interface(&update.iface_id)?;
                let (rx, tx) = (update.rx_rate_limiter, update.tx_rate_limiter);
                Ok((rx.is_some() || tx.is_some()).then(|| DeviceChange::Net {
                    id: update.iface_id.clone(),
                    rx_rate_limiter: rx,
                    tx_rate_limiter: tx,
                }))
            }
        }
    }

    /// Records an update the running VM has carried out.
    pub fn apply_update(&mut self, update: DeviceUpdate) {
        match update {
            DeviceUpdate::Drive(update) => {
                let drive = self
                    .drives
                    .iter_mut()
                    .find(|d| d.drive_id == update.drive_id);
                let Some(drive) = drive else {
                    return;
                };
                if let Some(path) = update.path_on_host {
                    drive.path_on_host = Some(path);
                }
                if let Some(limiter) = &update.rate_limiter {
                    drive.rate_limiter = RateLimiterConfig::patched(drive.rate_limiter, limiter);
                }
            }
            DeviceUpdate::Net(update) => {
                let Some(net) = self
                    .network_interfaces
                    .iter_mut()
                    .find(|n| n.iface_id == update.iface_id)
                else {
                    return;
                };
                if let Some(limiter) = &update.rx_rate_limiter {
                    net.rx_rate_limiter = RateLimiterConfig::patched(net.rx_rate_limiter, limiter);
                }
                if let Some(limiter) = &update.tx_rate_limiter {
                    net.tx_rate_limiter = RateLimiterConfig::patched(net.tx_rate_limiter, limiter);
                }
            }
        }
    }

    pub fn set_boot_source(&mut self, boot_source: BootSourceConfig) -> Result<(), Error> {
        check_file("kernel image", &boot_source.kernel_image_path)?;
        if let Some(initrd) = &boot_source.initrd_path {
            check_file("initrd", initrd)?;
        }
        self.boot_source = Some(boot_source);
        Ok(())
    }

    pub fn set_machine(&mut self, machine: MachineConfig) -> Result<(), Error> {
        machine.validate()?;
        self.check_balloon_fits(&machine)?;
        self.machine = machine;
        Ok(())
    }

    pub fn update_machine(&mut self, update: &MachineConfigUpdate) -> Result<(), Error> {
        let machine = self.machine.updated(update)?;
        self.check_balloon_fits(&machine)?;
        self.machine = machine;
        Ok(())
    }

    /// A machine change must leave room for the balloon already configured.
    fn check_balloon_fits(&self, machine: &MachineConfig) -> Result<(), Error> {
        match &self.balloon {
            Some(balloon) => Ok(balloon.validate(machine)?),
            None => Ok(()),
        }
    }

    /// The balloon after `PATCH /balloon`, checked; the caller records it
    /// once a running VM has taken it.
    pub fn patched_balloon(&self, update: BalloonUpdate) -> Result<BalloonConfig, Error> {
        let balloon = self.balloon.ok_or(Error::NoBalloon)?;
        let patched = BalloonConfig {
            amount_mib: update.amount_mib,
            ..balloon
        };
        patched.validate(&self.machine)?;
        Ok(patched)
    }

    /// Checks that the balloon does free page hinting.
    pub fn check_hinting(&self) -> Result<(), Error> {
        match self.balloon {
            None => Err(Error::NoBalloon),
            Some(balloon) if !balloon.free_page_hinting => Err(Error::NoHinting),
            Some(_) => Ok(()),
        }
    }

    /// The balloon after `PATCH /balloon/statistics`; after boot, statistics
    /// stay on or off as configured.
    pub fn patched_balloon_stats(
        &self,
        update: BalloonStatsUpdate,
        started: bool,
    ) -> Result<BalloonConfig, Error> {
        let balloon = self.balloon.ok_or(Error::NoBalloon)?;
        let (was_on, is_on) = (
            balloon.stats_polling_interval_s > 0,
            update.stats_polling_interval_s > 0,
        );
        if started && was_on != is_on {
            return Err(Error::StatsToggle);
        }
        Ok(BalloonConfig {
            stats_polling_interval_s: update.stats_polling_interval_s,
            ..balloon
        })
    }

    /// Adds a drive, or replaces the one with the same id.
    fn put_drive(&mut self, drive: DriveConfig) -> Result<(), Error> {
        drive.validate()?;
        check_file("drive file", drive.path())?;
        if drive.is_root_device {
            if let Some(root) = self
                .drives
                .iter()
                .find(|d| d.is_root_device && d.drive_id != drive.drive_id)
            {
                return Err(Error::SecondRoot(root.drive_id.clone()));
            }
        }
        match self
            .drives
            .iter_mut()
            .find(|d| d.drive_id == drive.drive_id)
        {
            Some(existing) => *existing = drive,
            None => self.drives.push(drive),
        }
        Ok(())
    }

    fn interface(&self, iface_id: &str) -> Result<&NetworkInterfaceConfig, Error> {
        self.network_interfaces
            .iter()
            .find(|n| n.iface_id == iface_id)
            .ok_or_else(|| Error::NoSuchInterface(iface_id.to_string()))
    }

    /// Adds an interface, or replaces the one with the same id. The TAP is
    /// opened now, so a bad one is refused at once rather than failing
    /// InstanceStart, and kept open for the device.
    fn put_net(&mut self, net: NetworkInterfaceConfig) -> Result<(), Error> {
        net.validate()?;
        let others = || {
            self.network_interfaces
                .iter()
                .filter(|n| n.iface_id != net.iface_id)
        };
        if let Some(other) = others().find(|n| n.host_dev_name == net.host_dev_name) {
            return Err(Error::TapInUse(
                net.iface_id.clone(),
                net.host_dev_name.clone(),
                other.iface_id.clone(),
            ));
        }
        if let Some(other) = others().find(|n| n.mac().is_some() && n.mac() == net.mac()) {
            return Err(Error::MacInUse(
                net.iface_id.clone(),
                net.guest_mac.clone().unwrap_or_default(),
                other.iface_id.clone(),
            ));
        }
        let replaced = self
            .network_interfaces
            .iter()
            .position(|n| n.iface_id == net.iface_id);
        let tap = match replaced.map(|i| &self.network_interfaces[i]) {
            // The same TAP again: it is already held.
            Some(old) if old.host_dev_name == net.host_dev_name => None,
            _ => Some(
                Tap::open(&net.host_dev_name).map_err(|e| Error::Tap(net.iface_id.clone(), e))?,
            ),
        };
        if let Some(tap) = tap {
            if let Some(old) = replaced.map(|i| &self.network_interfaces[i]) {
                self.open_taps.close(&old.host_dev_name);
            }
            self.open_taps.keep(tap);
        }
        match replaced {
            Some(i) => self.network_interfaces[i] = net,
            None => self.network_interfaces.push(net),
        }
        Ok(())
    }

    /// `PUT /mmds/config`: the interfaces must exist already, as in Firecracker.
    pub fn set_mmds_config(&mut self, config: MmdsConfig) -> Result<(), Error> {
        config.validate()?;
        for id in &config.network_interfaces {
            self.interface(id)
                .map_err(|_| Error::MmdsInterface(id.clone()))?;
        }
        if let Some(mut mmds) = self.mmds.lock() {
            mmds.version = config.version;
            mmds.imds_compat = config.imds_compat;
        }
        self.mmds_config = Some(config);
        Ok(())
    }

    fn set_vsock(&mut self, vsock: VsockConfig) -> Result<(), Error> {
        vsock.validate()?;
        self.vsock = Some(vsock);
        Ok(())
    }

    pub fn set_function(&mut self, function: FunctionConfig) -> Result<(), Error> {
        function.validate()?;
        self.function = function;
        Ok(())
    }
}
