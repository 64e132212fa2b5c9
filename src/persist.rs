//! Snapshots of a microVM: what the state file holds, taking one from a
//! paused VM, and bringing one back in a fresh ember.
//!
//! The container (magic, version, architecture, checksum) and the memory
//! files are `ember-snapshot`'s; this module decides what goes in them.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use ember_snapshot::aside::Aside;
use ember_snapshot::{format, memory as memfile};
use serde::{Deserialize, Serialize};

use crate::arch::x86_64::layout::ram_ranges;
use crate::builder::{self, RestoreOptions, SavedVm};
use crate::config::{
    MachineConfig, MemBackend, MemBackendType, SnapshotCreateConfig, SnapshotLoadConfig,
    SnapshotType, VmConfig,
};
use crate::devices::manager::{self, DeviceStates};
use crate::exit::ExitSignal;
use crate::mmds::SharedMmds;
use crate::resources::VmResources;
use crate::seccomp::Filters;
use crate::vmm::{self, Vmm};
use crate::vstate::memory::{self, GuestMemoryMmap, MemoryBackend, Pages};
use crate::vstate::vcpu::{VcpuState, VcpuThread};
use crate::vstate::vm::{self, VmState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Firecracker, too, snapshots only a paused VM: the state must not move while it is saved.
    #[error("the microVM must be paused first: PATCH /vm {{\"state\": \"Paused\"}}")]
    NotPaused,
    /// A Diff snapshot on a VM that does not know which pages changed.
    #[error(
        "a Diff snapshot needs dirty-page tracking: set track_dirty_pages in machine-config, or when loading the snapshot"
    )]
    NoDirtyTracking,
    /// Opening, creating or writing a snapshot file.
    #[error("cannot {what} '{path}': {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// A state file that is not one, or was written by another version or architecture.
    #[error("snapshot '{path}': {source}")]
    State { path: String, source: format::Error },
    /// A memory file that is not one, or has the wrong size.
    #[error("memory file '{path}': {source}")]
    MemoryFile {
        path: String,
        source: memfile::Error,
    },
    /// A state file whose parts do not fit together (or the load request does not fit it).
    #[error("snapshot '{path}' is inconsistent: {what}")]
    Inconsistent { path: String, what: String },
    /// A `vsock_override` for a snapshot without a vsock device.
    #[error("vsock_override: the snapshot has no vsock device")]
    NoVsockToOverride,
    /// A network override for an interface the snapshot does not have.
    #[error("network_overrides: the snapshot has no network interface '{0}'")]
    NoInterfaceToOverride(String),
    /// Saving the VM-wide state (clock, irqchip) or its dirty log.
    #[error(transparent)]
    Vm(#[from] vm::Error),
    /// Saving the vCPUs.
    #[error(transparent)]
    Vmm(#[from] vmm::Error),
    /// Mapping the guest memory, or the userfaultfd handshake.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// A snapshot taken on the other virtio transport.
    #[error("snapshot '{path}': {source}")]
    Transport {
        path: String,
        source: manager::Error,
    },
    /// Saving the device states on snapshot create.
    #[error("cannot save the device states: {0}")]
    SaveDevices(manager::Error),
    /// The configuration could not be written as JSON into the state file.
    #[error("cannot encode the configuration for '{path}': {source}")]
    EncodeConfig {
        path: String,
        source: serde_json::Error,
    },
    /// Rebuilding the VM, its devices and vCPUs on snapshot load.
    #[error("cannot restore the microVM: {0}")]
    Restore(#[from] builder::Error),
}

fn io_err<'a>(what: &'static str, path: &'a str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_string(),
        source,
    }
}

/// The state file format this build writes (`--snapshot-version`), in the
/// shape Firecracker prints its own: `v` and a semantic version. ember's
/// format version is its major number, as a build reads no other.
pub fn format_version() -> String {
    semver(format::FORMAT_VERSION)
}

/// The format version of the state file at `path` (`--describe-snapshot`),
/// as `format_version` prints it. A file of another version is described,
/// not refused: describing is how one learns it cannot be loaded.
pub fn describe(path: &str) -> Result<String, Error> {
    let file = File::open(path).map_err(io_err("open", path))?;
    match format::read_header(BufReader::new(file)) {
        Ok(header) => Ok(semver(header.version)),
        Err(format::Error::UnsupportedVersion { found, .. }) => Ok(semver(found)),
        Err(source) => Err(Error::State {
            path: path.to_string(),
            source,
        }),
    }
}

fn semver(format_version: u16) -> String {
    format!("v{format_version}.0.0")
}

/// What a state file holds. Public (its fields are not) so that the fuzz
/// targets can decode state files as `load` does.
#[derive(Serialize, Deserialize)]
pub struct MicrovmState {
    /// The configuration as `GET /vm/config` shows it. JSON inside the
    /// binary payload: its optional fields are skipped when absent, which a
    /// compact non-self-describing encoding cannot do.
    config: String,
    /// Where each guest memory region starts in the memory file.
    mem_offsets: Vec<u64>,
    vm: VmState,
    vcpus: Vec<VcpuState>,
    devices: DeviceStates,
}

/// Writes the paused `vmm`'s state and memory to the files `params` names.
pub fn create(vmm: &Vmm, config: &VmConfig, params: &SnapshotCreateConfig) -> Result<(), Error> {
    if !vmm.is_paused() {
        return Err(Error::NotPaused);
    }
    if params.snapshot_type == SnapshotType::Diff && !vmm.vm().tracks_dirty_pages() {
        return Err(Error::NoDirtyTracking);
    }
    let vcpus = vmm.save_vcpus()?;
    let vm = vmm.vm().save_state()?;
    let devices = vmm.devices().save_state().map_err(Error::SaveDevices)?;
    let config = serde_json::to_string(config).map_err(|source| Error::EncodeConfig {
        path: params.snapshot_path.clone(),
        source,
    })?;

    // Both files are written aside (under random names only ember can own)
    // and renamed into place once complete, so a failure never leaves a torn
    // snapshot where a good one was.
    let dirty = take_dirty_pages(vmm)?;
    let result = Aside::create(Path::new(&params.mem_file_path))
        .map_err(io_err("create", &params.mem_file_path))
        .and_then(|mem_file| {
            let mem_offsets = write_memory(
                vmm.mem(),
                params.snapshot_type,
                dirty.as_deref(),
                mem_file.file(),
                &params.mem_file_path,
            )?;
            let state_file = Aside::create(Path::new(&params.snapshot_path))
                .map_err(io_err("create", &params.snapshot_path))?;
            let state = MicrovmState {
                config,
                mem_offsets,
                vm,
                vcpus,
                devices,
            };
            format::save(state_file.file(), &state).map_err(|source| Error::State {
                path: params.snapshot_path.clone(),
                source,
            })?;
            mem_file
                .commit()
                .map_err(io_err("write", &params.mem_file_path))?;
            state_file
                .commit()
                .map_err(io_err("write", &params.snapshot_path))
        });
    // The next diff must still hold what a failed snapshot would have.
    if let (Err(_), Some(dirty)) = (&result, &dirty) {
        memory::mark_dirty(vmm.mem(), dirty);
    }
    result
}

/// The pages written since the last snapshot, by the guest or by ember's
/// devices, per region; taking them starts a new interval. `None` without
/// dirty-page tracking.
fn take_dirty_pages(vmm: &Vmm) -> Result<Option<Vec<Vec<u64>>>, Error> {
    if !vmm.vm().tracks_dirty_pages() {
        return Ok(None);
    }
    let guest = vmm.vm().take_dirty_log(vmm.mem())?;
    let devices = memory::take_vmm_dirty(vmm.mem());
    Ok(Some(
        guest
            .into_iter()
            .zip(devices)
            .map(|(g, d)| g.iter().zip(&d).map(|(g, d)| g | d).collect())
            .collect(),
    ))
}

/// Writes guest memory to `file` (to be found at `path`), all of it or only
/// the `dirty` pages.
/// Returns each region's offset in the file.
fn write_memory(
    mem: &GuestMemoryMmap,
    kind: SnapshotType,
    dirty: Option<&[Vec<u64>]>,
    file: &File,
    path: &str,
) -> Result<Vec<u64>, Error> {
    let mem_err = |source| Error::MemoryFile {
        path: path.to_string(),
        source,
    };
    let regions = guest_bytes(mem);
    match (kind, dirty) {
        (SnapshotType::Diff, Some(dirty)) => {
            let diff: Vec<memfile::DirtyRegion> = regions
                .iter()
                .zip(dirty)
                .map(|(data, bitmap)| memfile::DirtyRegion { data, bitmap })
                .collect();
            memfile::write_diff(file, &diff).map_err(mem_err)
        }
        (SnapshotType::Diff, None) => Err(Error::NoDirtyTracking),
        (SnapshotType::Full, _) => memfile::write_full(file, &regions).map_err(mem_err),
    }
}

/// Guest memory as byte slices, one per region.
fn guest_bytes(mem: &GuestMemoryMmap) -> Vec<&[u8]> {
    memory::host_ranges(mem)
        .into_iter()
        // SAFETY: each range is a live mapping owned by `mem`, which outlives
        // the slices. The vCPUs are paused and devices only run on this thread,
        // so nothing writes guest memory while the slices are read.
        .map(|(host, len)| unsafe { std::slice::from_raw_parts(host.cast_const(), len) })
        .collect()
}

/// What a load needs besides its parameters.
pub struct LoadOptions<'a> {
    pub exit: Arc<ExitSignal>,
    pub seccomp: &'a Filters,
    /// vCPU threads started ahead, used if there are as many as the VM has vCPUs.
    pub vcpu_threads: Vec<VcpuThread>,
    pub mmds: SharedMmds,
    /// Whether this ember puts virtio devices on PCI (`--enable-pci`); the
    /// snapshot must have been taken the same way.
    pub pci: bool,
}

/// Brings back the microVM `params` names; returns it with the resources it
/// was saved with.
pub fn load(
    params: &SnapshotLoadConfig,
    options: LoadOptions,
) -> Result<(Vmm, VmResources), Error> {
    let LoadOptions {
        exit,
        seccomp,
        vcpu_threads,
        mmds,
        pci,
    } = options;
    let path = &params.snapshot_path;
    let inconsistent = |what: String| Error::Inconsistent {
        path: path.clone(),
        what,
    };
    let file = File::open(path).map_err(io_err("open", path))?;
    let state: MicrovmState =
        format::load(BufReader::new(file)).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
    state
        .devices
        .check_transport(pci)
        .map_err(|source| Error::Transport {
            path: path.clone(),
            source,
        })?;
    let mut config: VmConfig = serde_json::from_str(&state.config)
        .map_err(|e| inconsistent(format!("its configuration: {e}")))?;
    let mut machine = config.machine_config.clone().unwrap_or_default();
    machine
        .validate()
        .map_err(|e| inconsistent(format!("its machine configuration: {e}")))?;
    machine.track_dirty_pages = params.track_dirty_pages || params.enable_diff_snapshots;
    if let Some(vsock_override) = &params.vsock_override {
        let vsock = config.vsock.as_mut().ok_or(Error::NoVsockToOverride)?;
        vsock.uds_path = vsock_override.uds_path.clone();
    }
    for o in &params.network_overrides {
        let net = config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == o.iface_id)
            .ok_or_else(|| Error::NoInterfaceToOverride(o.iface_id.clone()))?;
        net.host_dev_name = o.host_dev_name.clone();
    }
    let regions = ram_ranges(machine.mem_size_mib << 20);
    if state.mem_offsets.len() != regions.len() {
        return Err(inconsistent(format!(
            "{} memory regions for {} MiB, which has {}",
            state.mem_offsets.len(),
            machine.mem_size_mib,
            regions.len()
        )));
    }

    let backend = params.backend().map_err(|e| inconsistent(e.to_string()))?;
    let size = regions.iter().map(|&(_, len)| len).sum();
    let (mem, memory_backend) = map_memory(&backend, &machine, size, &state.mem_offsets)?;

    config.machine_config = Some(machine);
    if let (Some(mmds_config), Some(mut service)) = (&config.mmds_config, mmds.lock()) {
        service.version = mmds_config.version;
        service.imds_compat = mmds_config.imds_compat;
    }
    let resources = VmResources {
        mmds,
        ..VmResources::from_config(config)
    };
    let saved = SavedVm {
        resources: &resources,
        vm: &state.vm,
        vcpus: &state.vcpus,
        devices: &state.devices,
    };
    let options = RestoreOptions {
        memory_backend,
        paused: !params.resume_vm,
        clock_realtime: params.clock_realtime,
        exit,
        seccomp,
        ready_threads: vcpu_threads,
        pci,
    };
    let vmm = builder::restore(saved, mem, options)?;
    Ok((vmm, resources))
}

/// Guest memory for `machine` (`size` bytes of RAM) from `backend`, each
/// region found at its offset in the memory file; with userfaultfd, also
/// what serves it.
fn map_memory(
    backend: &MemBackend,
    machine: &MachineConfig,
    size: u64,
    mem_offsets: &[u64],
) -> Result<(GuestMemoryMmap, Option<MemoryBackend>), Error> {
    let backend_path = &backend.backend_path;
    let (mem_size_mib, pages) = (machine.mem_size_mib, builder::guest_pages(machine));
    match backend.backend_type {
        MemBackendType::File => {
            let file = File::open(backend_path).map_err(io_err("open", backend_path))?;
            memfile::check_size(&file, size).map_err(|source| Error::MemoryFile {
                path: backend_path.clone(),
                source,
            })?;
            let mem = match pages {
                Pages::Small => memory::from_file(&file, mem_size_mib, mem_offsets)?,
                Pages::Huge => memory::huge_from_file(&file, mem_size_mib, mem_offsets)?,
            };
            Ok((mem, None))
        }
        MemBackendType::Uffd => {
            let mem = memory::create(mem_size_mib, pages)?;
            let socket = Path::new(backend_path);
            let served = memory::serve_with_uffd(&mem, pages, mem_offsets, socket)?;
            Ok((mem, Some(served)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, bytes: &[u8]) -> String {
        let path = std::env::temp_dir().join(format!("ember-{name}-{}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn state_files_are_described_by_their_format_version() {
        let mut bytes = Vec::new();
        format::save(&mut bytes, &"any state").unwrap();
        let path = scratch("describe-ok", &bytes);
        assert_eq!(describe(&path).unwrap(), format_version());
        assert_eq!(format_version(), format!("v{}.0.0", format::FORMAT_VERSION));

        // Another version is described even though this build cannot load it.
        bytes[format::MAGIC.len()..format::MAGIC.len() + 2].copy_from_slice(&7u16.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(describe(&path).unwrap(), "v7.0.0");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn what_is_not_a_state_file_is_an_error_naming_it() {
        let path = scratch("describe-bad", b"{\"not\": \"a snapshot\"}");
        let message = describe(&path).unwrap_err().to_string();
        assert!(message.contains(&path), "{message}");
        assert!(message.contains("not an ember snapshot"), "{message}");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(describe(&path), Err(Error::Io { .. })));
    }
}
