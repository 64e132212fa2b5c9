//! From a validated configuration to a running microVM.
//!
//! Everything here is on the InstanceStart path, so it does only what the
//! guest needs before its first instruction: guest memory is mapped lazily,
//! files are opened once, and the vCPUs start as soon as they are configured.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use linux_loader::loader::Cmdline;

use crate::arch::x86_64::boot;
use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;
use crate::config::{MachineConfig, DEFAULT_BOOT_ARGS};
use crate::devices::manager::{self, Backends, DeviceLayout, DeviceStates, Devices};
use crate::exit::ExitSignal;
use crate::resources::VmResources;
use crate::seccomp::Filters;
use crate::vmm::Vmm;
use crate::vstate::memory::{self, GuestMemoryMmap, MemoryBackend, Pages};
use crate::vstate::vcpu::{self, Buses, Vcpu, VcpuHandle, VcpuState, VcpuThread};
use crate::vstate::vm::{self, VmState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// InstanceStart with nothing to boot.
    #[error("no boot source: PUT /boot-source with a kernel_image_path first")]
    NoBootSource,
    /// The VM, its memory slots or its interrupt controllers.
    #[error(transparent)]
    Vm(#[from] vm::Error),
    /// Mapping the guest memory.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// Loading the kernel or initrd, or writing the boot parameters.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// Creating, configuring or starting a vCPU.
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    /// Laying out, opening or creating the devices.
    #[error(transparent)]
    Devices(#[from] manager::Error),
    /// A command line that is too long or malformed.
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// The thread that readies the VM ahead could not start.
    #[error("cannot start the VM preparation thread: {0}")]
    PrepThread(std::io::Error),
    /// The thread that readies the VM ahead panicked.
    #[error("the VM preparation thread panicked")]
    PrepPanicked,
    /// A newer machine configuration replaced the preparation before it made its VM.
    #[error("the VM preparation was replaced by a newer one")]
    Replaced,
    /// A snapshot whose vCPU states do not fit its machine configuration.
    #[error("the snapshot's state is invalid: {0}")]
    BadState(&'static str),
    /// The host CPUID the vCPUs are configured from.
    #[error("KVM cannot tell the CPUID it supports: {0}")]
    Cpuid(kvm_ioctls::Error),
}

/// What the builder needs beyond the configuration.
pub struct BuildOptions {
    /// Adds Firecracker's boot-timer device, timing from `start`.
    pub boot_timer: bool,
    pub start: Instant,
    /// Puts the virtio devices on PCI (`--enable-pci`).
    pub pci: bool,
}

/// The pages `machine`'s guest memory is made of.
pub fn guest_pages(machine: &MachineConfig) -> Pages {
    if machine.huge_pages() {
        Pages::Huge
    } else {
        Pages::Small
    }
}

/// A VM being made ready off the start path.
///
/// Creating the VM with its memory slots and interrupt controllers, querying
/// CPUID and starting the vCPU threads do not depend on the kernel or the
/// devices, so they run on their own thread as soon as the machine
/// configuration is known, while the API is still being configured or the
/// kernel is being loaded. Guest memory itself is mapped right away.
///
/// A VM costs the kernel memory in proportion to its size (under shadow
/// paging, 2 GiB of page maps for 1 TiB of guest memory), so a client that
/// keeps changing the machine configuration must not have VMs made side by
/// side: each preparation waits until the one it replaces has made its VM
/// and hands that to be destroyed, and makes no VM of its own if it has been
/// replaced in turn meanwhile.
pub struct VmPrep {
    mem_size_mib: u64,
    pages: Pages,
    track_dirty_pages: bool,
    mem: GuestMemoryMmap,
    /// Taken by `finish`; otherwise joined, and the VM destroyed, off the
    /// caller's path when the preparation is dropped or replaced.
    kvm: Option<JoinHandle<Result<(vm::Vm, CpuId), Error>>>,
    /// Set once nobody will use this preparation.
    abandoned: Arc<AtomicBool>,
    /// Started here, so a snapshot load can take them without waiting for the VM.
    vcpu_threads: Vec<VcpuThread>,
}

/// What is left of a preparation nobody will use: its VM, maybe still
/// being made, and its guest memory.
pub struct Leftover {
    kvm: JoinHandle<Result<(vm::Vm, CpuId), Error>>,
    mem: GuestMemoryMmap,
}

impl Leftover {
    /// Destroys the VM, then unmaps its memory: in the other order, the unmap
    /// would have KVM walk the whole memory slot (0.1 s for 1 TiB).
    fn destroy(self) {
        Self::destroy_made(self.kvm.join(), self.mem);
    }

    /// Waits until the VM is made (or given up), then destroys it on a thread
    /// of its own: the next preparation makes its VM only after that, but
    /// need not wait for the teardown (up to an SRCU grace period).
    fn retire(self) {
        let made = self.kvm.join();
        let mem = self.mem;
        let _ = std::thread::Builder::new()
            .name("ember_vmdrop".into())
            .spawn(move || Self::destroy_made(made, mem));
    }

    fn destroy_made<T>(made: T, mem: GuestMemoryMmap) {
        drop(made);
        drop(mem);
    }
}

impl VmPrep {
    /// Starts readying a VM for `machine`, taking `ready` as its vCPU threads
    /// if there are as many as it needs, once `replaced` has made its VM.
    pub fn start(
        machine: &MachineConfig,
        ready: Vec<VcpuThread>,
        replaced: Option<Leftover>,
        exit: &Arc<ExitSignal>,
        seccomp: &Filters,
    ) -> Result<Self, Error> {
        let pages = guest_pages(machine);
        let mem = memory::create(machine.mem_size_mib, pages)?;
        let slots = mem.clone();
        let track_dirty_pages = machine.track_dirty_pages;
        let abandoned = Arc::new(AtomicBool::new(false));
        let given_up = abandoned.clone();
        let kvm = std::thread::Builder::new()
            .name("ember_vmprep".into())
            .spawn(move || {
                if let Some(replaced) = replaced {
                    replaced.retire();
                }
                if given_up.load(Ordering::Acquire) {
                    return Err(Error::Replaced);
                }
                let vm = vm::Vm::new(&slots, track_dirty_pages)?;
                let cpuid = vm
                    .kvm()
                    .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                    .map_err(Error::Cpuid)?;
                Ok((vm, cpuid))
            })
            .map_err(Error::PrepThread)?;
        let vcpu_threads = vcpu_threads(ready, machine.vcpu_count, exit, seccomp)?;
        Ok(VmPrep {
            mem_size_mib: machine.mem_size_mib,
            pages,
            track_dirty_pages,
            mem,
            kvm: Some(kvm),
            abandoned,
            vcpu_threads,
        })
    }

    /// Whether this VM fits a machine configuration.
    pub fn fits(&self, machine: &MachineConfig) -> bool {
        self.mem_size_mib == machine.mem_size_mib
            && self.pages == guest_pages(machine)
            && self.track_dirty_pages == machine.track_dirty_pages
            && self.vcpu_threads.len() == usize::from(machine.vcpu_count)
    }

    fn finish(mut self) -> Result<(vm::Vm, CpuId, Vec<VcpuThread>), Error> {
        let kvm = self.kvm.take().ok_or(Error::PrepPanicked)?;
        let (vm, cpuid) = kvm.join().map_err(|_| Error::PrepPanicked)??;
        Ok((vm, cpuid, std::mem::take(&mut self.vcpu_threads)))
    }

    /// For a preparation that another replaces: its vCPU threads, and what
    /// the next preparation retires before it makes a VM.
    pub fn into_parts(mut self) -> (Vec<VcpuThread>, Option<Leftover>) {
        (std::mem::take(&mut self.vcpu_threads), self.leftover())
    }

    /// For a snapshot load, which needs a VM of its own: the vCPU threads.
    pub fn into_vcpu_threads(mut self) -> Vec<VcpuThread> {
        std::mem::take(&mut self.vcpu_threads)
    }

    fn leftover(&mut self) -> Option<Leftover> {
        self.abandoned.store(true, Ordering::Release);
        let kvm = self.kvm.take()?;
        Some(Leftover {
            kvm,
            mem: std::mem::take(&mut self.mem),
        })
    }
}

impl Drop for VmPrep {
    /// Destroying a VM takes milliseconds (and it may not even be ready):
    /// a preparation nobody used is let go on a thread of its own.
    fn drop(&mut self) {
        if let Some(leftover) = self.leftover() {
            let _ = std::thread::Builder::new()
                .name("ember_vmdrop".into())
                .spawn(move || leftover.destroy());
        }
    }
}

/// `count` vCPU threads: those in `ready` if there are as many, else new ones.
pub fn vcpu_threads(
    ready: Vec<VcpuThread>,
    count: u8,
    exit: &Arc<ExitSignal>,
    seccomp: &Filters,
) -> Result<Vec<VcpuThread>, Error> {
    if ready.len() == usize::from(count) {
        return Ok(ready);
    }
    Ok((0..count)
        .map(|index| VcpuThread::spawn(index, exit.clone(), seccomp.clone()))
        .collect::<Result<_, _>>()?)
}

/// Builds and starts the microVM described by the configuration, on the VM `prep` made ready.
pub fn build(
    prep: VmPrep,
    resources: &VmResources,
    options: &BuildOptions,
    exit: Arc<ExitSignal>,
) -> Result<Vmm, Error> {
    let boot_source = resources.boot_source.as_ref().ok_or(Error::NoBootSource)?;
    let machine = &resources.machine;
    let mut stages = Stages::new();
    let mem = prep.mem.clone();
    let mem_size = machine.mem_size_mib << 20;

    // First everything that only writes guest memory or reads files...
    let kernel = boot::load_kernel(&mem, Path::new(&boot_source.kernel_image_path))?;
    let initrd = boot_source
        .initrd_path
        .as_deref()
        .map(|p| boot::load_initrd(&mem, Path::new(p), mem_size))
        .transpose()?;
    stages.mark("kernel");

    let layout = DeviceLayout::plan(resources, options.pci)?;
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(Error::Cmdline)?;
    let boot_args = boot_source
        .boot_args
        .as_deref()
        .unwrap_or(DEFAULT_BOOT_ARGS);
    cmdline.insert_str(boot_args).map_err(Error::Cmdline)?;
    layout.add_to_cmdline(&mut cmdline)?;
    boot::configure_system(
        &mem,
        &kernel,
        &cmdline,
        initrd,
        mem_size,
        machine.vcpu_count,
        &layout.acpi_devices(),
    )?;
    let backends = layout.open_backends()?;
    stages.mark("boot params");

    // ...then what needs the VM.
    let (vm, supported_cpuid, threads) = prep.finish()?;
    stages.mark("vm ready");

    let boot_timer = options.boot_timer.then_some(options.start);
    let (buses, devices) = Devices::create(&vm, &mem, backends, boot_timer, &exit, None)?;
    stages.mark("devices");

    let vcpus = (0..machine.vcpu_count)
        .map(|index| {
            let vcpu = Vcpu::new(&vm, index)?;
            let boot = (index == 0).then_some((&mem, kernel.entry));
            vcpu.configure(&supported_cpuid, machine.vcpu_count, boot)?;
            Ok(vcpu)
        })
        .collect::<Result<Vec<_>, vcpu::Error>>()?;

    let handles = start_vcpus(vcpus, threads, buses, false)?;
    stages.mark("vcpus");
    stages.log("InstanceStart");
    Ok(Vmm::new(vm, mem, handles, devices, false, None))
}

/// Gives each vCPU to its thread, one for one.
fn start_vcpus(
    vcpus: Vec<Vcpu>,
    threads: Vec<VcpuThread>,
    mut buses: Buses,
    paused: bool,
) -> Result<Vec<VcpuHandle>, Error> {
    if let (true, Some(vcpu)) = (buses.holds_writes, vcpus.first()) {
        buses.held_writes = Some(vcpu.map_held_writes()?);
    }
    let buses = Arc::new(buses);
    Ok(vcpus
        .into_iter()
        .zip(threads)
        .map(|(vcpu, thread)| thread.run(vcpu, buses.clone(), paused))
        .collect::<Result<Vec<_>, _>>()?)
}

/// A saved microVM, as [`restore`] needs it.
pub struct SavedVm<'a> {
    pub resources: &'a VmResources,
    pub vm: &'a VmState,
    pub vcpus: &'a [VcpuState],
    pub devices: &'a DeviceStates,
}

/// How a restored microVM comes back.
pub struct RestoreOptions<'a> {
    /// What serves guest memory, kept for as long as the VM runs.
    pub memory_backend: Option<MemoryBackend>,
    /// Whether the vCPUs wait for a Resume rather than run at once.
    pub paused: bool,
    /// Whether the guest's clock jumps to the host's real time.
    pub clock_realtime: bool,
    pub exit: Arc<ExitSignal>,
    pub seccomp: &'a Filters,
    /// vCPU threads started ahead, used if there are as many as vCPUs.
    pub ready_threads: Vec<VcpuThread>,
    /// Puts the virtio devices on PCI (`--enable-pci`), as they were saved.
    pub pci: bool,
}

/// Brings a saved microVM back on guest memory `mem`, which already holds
/// (or, with userfaultfd, will serve) the saved pages.
pub fn restore(
    saved: SavedVm,
    mem: GuestMemoryMmap,
    options: RestoreOptions,
) -> Result<Vmm, Error> {
    let mut stages = Stages::new();
    let machine = &saved.resources.machine;
    if saved.vcpus.len() != usize::from(machine.vcpu_count) {
        return Err(Error::BadState(
            "the snapshot's vCPU states do not match its vCPU count",
        ));
    }
    let layout = DeviceLayout::plan(saved.resources, options.pci)?;
    let backends = layout.open_backends()?;
    let threads = vcpu_threads(
        options.ready_threads,
        machine.vcpu_count,
        &options.exit,
        options.seccomp,
    )?;
    let vm = vm::Vm::new(&mem, machine.track_dirty_pages)?;
    stages.mark("vm");
    let clock_realtime = options.clock_realtime;
    let restored = restore_on(
        &vm,
        &mem,
        &saved,
        backends,
        clock_realtime,
        &options.exit,
        &mut stages,
    )
    .and_then(|(vcpus, buses, devices)| {
        Ok((start_vcpus(vcpus, threads, buses, options.paused)?, devices))
    });
    match restored {
        Ok((handles, devices)) => {
            stages.mark("vcpus");
            stages.log("snapshot restore");
            let paused = options.paused;
            Ok(Vmm::new(
                vm,
                mem,
                handles,
                devices,
                paused,
                options.memory_backend,
            ))
        }
        Err(e) => {
            // Destroying a VM takes milliseconds: keep it off the error reply.
            let _ = std::thread::Builder::new()
                .name("ember_vmdrop".into())
                .spawn(move || drop((vm, mem)));
            Err(e)
        }
    }
}

/// The saved VM's state, devices and vCPUs, on `vm`.
fn restore_on(
    vm: &vm::Vm,
    mem: &GuestMemoryMmap,
    saved: &SavedVm,
    backends: Backends,
    clock_realtime: bool,
    exit: &Arc<ExitSignal>,
    stages: &mut Stages,
) -> Result<(Vec<Vcpu>, Buses, Devices), Error> {
    vm.restore_state(saved.vm, clock_realtime)?;
    stages.mark("vm state");
    let (buses, devices) = Devices::create(vm, mem, backends, None, exit, Some(saved.devices))?;
    stages.mark("devices");
    // `restore` checked that there is one state per vCPU.
    let vcpus = (0..saved.resources.machine.vcpu_count)
        .zip(saved.vcpus)
        .map(|(index, state)| {
            let vcpu = Vcpu::new(vm, index)?;
            vcpu.restore_state(state)?;
            Ok(vcpu)
        })
        .collect::<Result<Vec<_>, vcpu::Error>>()?;
    Ok((vcpus, buses, devices))
}

/// Times the steps of a start for the log, so "where the time goes" is one
/// `--level Info` away.
struct Stages {
    last: Instant,
    start: Instant,
    marks: Vec<(&'static str, std::time::Duration)>,
}

impl Stages {
    fn new() -> Self {
        let now = Instant::now();
        Stages {
            last: now,
            start: now,
            marks: Vec::with_capacity(8),
        }
    }

    fn mark(&mut self, stage: &'static str) {
        let now = Instant::now();
        self.marks.push((stage, now - self.last));
        self.last = now;
    }

    fn log(&self, what: &str) {
        if log::log_enabled!(log::Level::Info) {
            let parts: Vec<String> = self
                .marks
                .iter()
                .map(|(stage, d)| format!("{stage} {}us", d.as_micros()))
                .collect();
            log::info!(
                "{what} took {}us: {}",
                self.start.elapsed().as_micros(),
                parts.join(", ")
            );
        }
    }
}
