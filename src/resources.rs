//! Everything configured before InstanceStart, in one value: what the API and
//! `--config-file` set piece by piece, and what the builder takes whole.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use crate::config::{
    self, BootSourceConfig, DeviceConfig, DeviceUpdate, DriveConfig, FunctionConfig, LoggerConfig,
    MachineConfig, MachineConfigUpdate, VmConfig, VsockConfig,
};
use crate::mmds::MmdsStore;

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
}

/// What a running VM's devices must do for a [`DeviceUpdate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    /// Drive `id` gets another backing file (its guest hears of the new size).
    DriveFile {
        id: String,
        path: PathBuf,
        read_only: bool,
    },
}

/// The microVM's configuration, as the pre-boot requests leave it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmResources {
    pub boot_source: Option<BootSourceConfig>,
    pub machine: MachineConfig,
    pub drives: Vec<DriveConfig>,
    pub vsock: Option<VsockConfig>,
    pub function: FunctionConfig,
    pub logger: Option<LoggerConfig>,
    /// The metadata service's document: not part of the VM's configuration
    /// (`GET /vm/config` and snapshots leave it out, as Firecracker's do).
    pub mmds: MmdsStore,
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
            function: config.function.unwrap_or_default(),
            logger: config.logger,
            mmds: MmdsStore::default(),
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
            function: Some(self.function.clone()),
            ..Default::default()
        }
    }

    /// Whether anything only a boot uses is configured, which a snapshot
    /// load would silently replace.
    pub fn has_boot_devices(&self) -> bool {
        self.boot_source.is_some() || !self.drives.is_empty() || self.vsock.is_some()
    }

    /// Adds or replaces a device.
    pub fn put_device(&mut self, device: DeviceConfig) -> Result<(), Error> {
        match device {
            DeviceConfig::Drive(drive) => self.put_drive(drive),
            DeviceConfig::Vsock(vsock) => self.set_vsock(vsock),
        }
    }

    /// Checks `update` against the configuration and says what the running
    /// VM's devices must do for it, if anything.
    pub fn device_change(&self, update: &DeviceUpdate) -> Result<Option<DeviceChange>, Error> {
        match update {
            DeviceUpdate::Drive(update) => {
                update.validate()?;
                let drive = self
                    .drives
                    .iter()
                    .find(|d| d.drive_id == update.drive_id)
                    .ok_or_else(|| Error::NoSuchDrive(update.drive_id.clone()))?;
                Ok(update
                    .path_on_host
                    .as_ref()
                    .map(|path| DeviceChange::DriveFile {
                        id: drive.drive_id.clone(),
                        path: PathBuf::from(path),
                        read_only: drive.is_read_only,
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
                if let (Some(drive), Some(path)) = (drive, update.path_on_host) {
                    drive.path_on_host = Some(path);
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
        self.machine = machine;
        Ok(())
    }

    pub fn update_machine(&mut self, update: &MachineConfigUpdate) -> Result<(), Error> {
        self.machine = self.machine.updated(update)?;
        Ok(())
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
