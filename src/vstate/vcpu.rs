//! vCPUs: boot-time configuration, and one thread per vCPU running the
//! `KVM_RUN` loop, dispatching port and MMIO exits to the device buses.
//!
//! Pause and resume go through a small state machine: the main thread sends a
//! command and kicks the thread with a signal, whose handler sets
//! `immediate_exit` so a kick that lands just before `KVM_RUN` is not lost.

use std::cell::Cell;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use crate::vstate::memory::GuestMemoryMmap;
use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_run, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::coalesced::HeldWrites;
use super::vm::Vm;
use crate::arch::x86_64::{cpuid, regs};
use crate::devices::bus::Bus;
use crate::exit::{ExitReason, ExitSignal};
use crate::metrics::METRICS;
use crate::seccomp::{Filters, ThreadKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A vCPU ioctl failed: `what` it was for, on which vCPU.
    #[error("KVM refused to {what} for vCPU {index}: {source}")]
    Kvm {
        what: &'static str,
        index: u8,
        source: kvm_ioctls::Error,
    },
    /// A system ioctl about every vCPU failed (the list of MSRs to save).
    #[error("KVM refused to {what}: {source}")]
    KvmSystem {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// The boot registers, page tables or descriptor tables could not be written.
    #[error("cannot write vCPU boot state: {0}")]
    BootState(#[from] regs::Error),
    /// KVM took only some of the MSRs a boot or a restore sets.
    #[error("KVM accepted {set} of {total} boot MSRs for vCPU {index}")]
    Msrs { index: u8, set: usize, total: usize },
    /// The thread a vCPU runs on could not start.
    #[error("cannot start the thread of vCPU {index}: {source}")]
    Spawn { index: u8, source: std::io::Error },
    /// The signal that kicks a vCPU out of KVM_RUN for a pause.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// The vCPU's thread ended or dropped its channel.
    #[error("vCPU {0} stopped answering")]
    Gone(u8),
    /// The page where KVM keeps held-back MMIO writes could not be mapped.
    #[error("cannot map the coalesced MMIO ring through vCPU {index}: {source}")]
    HeldWrites { index: u8, source: std::io::Error },
    /// A snapshot with more MSRs than one KVM_SET_MSRS call takes.
    #[error("the snapshot holds {0} MSRs, more than KVM takes at once")]
    TooManyMsrs(usize),
}

/// What the main thread asks of a vCPU thread.
#[derive(Debug, Clone)]
enum Command {
    Pause,
    Resume,
    /// Save the vCPU's state, reading these MSRs; only while paused.
    Save(Arc<[u32]>),
}

/// A vCPU thread's answer to a [`Command`].
enum Ack {
    Paused,
    Resumed,
    Saved(Result<Box<VcpuState>, Error>),
}

/// Everything KVM holds for one vCPU, as a snapshot stores it.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    cpuid: CpuId,
    msrs: Msrs,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debug_regs: kvm_debugregs,
    lapic: kvm_lapic_state,
    mp_state: kvm_mp_state,
    vcpu_events: kvm_vcpu_events,
    tsc_khz: Option<u32>,
}

/// The TSC deadline only makes sense once the TSC itself is back.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// The MSRs a snapshot saves: all KVM can save and restore, the TSC deadline last.
pub fn msrs_to_save(vm: &Vm) -> Result<Arc<[u32]>, Error> {
    let list = vm
        .kvm()
        .get_msr_index_list()
        .map_err(|source| Error::KvmSystem {
            what: "list the MSRs to save",
            source,
        })?;
    let mut indices = list.as_slice().to_vec();
    indices.sort_by_key(|&index| index == MSR_IA32_TSC_DEADLINE);
    Ok(indices.into())
}

/// The ports and MMIO windows a vCPU thread dispatches exits to.
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
    /// Whether some MMIO window has KVM hold its writes back ([`HeldWrites`]).
    pub holds_writes: bool,
    /// Those writes, mapped once the first vCPU exists.
    pub held_writes: Option<HeldWrites>,
}

pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

impl Vcpu {
    pub fn new(vm: &Vm, index: u8) -> Result<Self, Error> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| Error::Kvm {
                what: "create the vCPU",
                index,
                source,
            })?;
        Ok(Vcpu { index, fd })
    }

    /// The VM's ring of held-back MMIO writes, mapped through this vCPU.
    pub fn map_held_writes(&self) -> Result<HeldWrites, Error> {
        HeldWrites::map(&self.fd).map_err(|source| Error::HeldWrites {
            index: self.index,
            source,
        })
    }

    fn kvm_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        let index = self.index;
        move |source| Error::Kvm {
            what,
            index,
            source,
        }
    }

    /// Sets CPUID, MSRs and the local APIC; for the boot vCPU also the
    /// registers that enter the kernel.
    pub fn configure(
        &self,
        supported_cpuid: &CpuId,
        count: u8,
        boot: Option<(&GuestMemoryMmap, regs::BootEntry)>,
    ) -> Result<(), Error> {
        let mut entries = supported_cpuid.as_slice().to_vec();
        cpuid::filter(&mut entries, self.index, count, self.fd.get_tsc_khz().ok());
        let cpuid = CpuId::from_entries(&entries).map_err(|_| Error::Kvm {
            what: "build CPUID",
            index: self.index,
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.kvm_err("set CPUID"))?;

        let boot_msrs = regs::boot_msrs();
        let msrs = Msrs::from_entries(&boot_msrs).map_err(|_| Error::Kvm {
            what: "build MSRs",
            index: self.index,
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let set = self.fd.set_msrs(&msrs).map_err(self.kvm_err("set MSRs"))?;
        if set != boot_msrs.len() {
            return Err(Error::Msrs {
                index: self.index,
                set,
                total: boot_msrs.len(),
            });
        }

        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(self.kvm_err("read the LAPIC"))?;
        regs::setup_lint(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.kvm_err("set the LAPIC"))?;

        if let Some((mem, entry)) = boot {
            let mut sregs = self.fd.get_sregs().map_err(self.kvm_err("read sregs"))?;
            regs::setup_sregs(mem, entry.protocol, &mut sregs)?;
            self.fd
                .set_sregs(&sregs)
                .map_err(self.kvm_err("set sregs"))?;
            self.fd
                .set_regs(&regs::boot_regs(entry))
                .map_err(self.kvm_err("set registers"))?;
            self.fd
                .set_fpu(&regs::boot_fpu())
                .map_err(self.kvm_err("set the FPU"))?;
        }
        Ok(())
    }

    /// Reads the vCPU's whole state; the vCPU must be out of guest mode.
    fn save_state(&self, msr_indices: &[u32]) -> Result<VcpuState, Error> {
        // Tells a kvmclock guest it was stopped, so its soft-lockup watchdog
        // does not fire on resume; guests without kvmclock refuse, harmlessly.
        let _ = self.fd.kvmclock_ctrl();
        Ok(VcpuState {
            cpuid: self
                .fd
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .map_err(self.kvm_err("read CPUID"))?,
            msrs: self.read_msrs(msr_indices)?,
            regs: self.fd.get_regs().map_err(self.kvm_err("read registers"))?,
            sregs: self.fd.get_sregs().map_err(self.kvm_err("read sregs"))?,
            xsave: self.fd.get_xsave().map_err(self.kvm_err("read XSAVE"))?,
            xcrs: self.fd.get_xcrs().map_err(self.kvm_err("read XCRs"))?,
            debug_regs: self
                .fd
                .get_debug_regs()
                .map_err(self.kvm_err("read debug registers"))?,
            lapic: self
                .fd
                .get_lapic()
                .map_err(self.kvm_err("read the LAPIC"))?,
            mp_state: self
                .fd
                .get_mp_state()
                .map_err(self.kvm_err("read the MP state"))?,
            vcpu_events: self
                .fd
                .get_vcpu_events()
                .map_err(self.kvm_err("read vCPU events"))?,
            tsc_khz: self.fd.get_tsc_khz().ok(),
        })
    }

    /// Reads every MSR of `indices` this host can read, skipping the others.
    fn read_msrs(&self, indices: &[u32]) -> Result<Msrs, Error> {
        let mut saved: Vec<kvm_msr_entry> = Vec::with_capacity(indices.len());
        let mut rest = indices;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs =
                Msrs::from_entries(&entries).map_err(|_| Error::TooManyMsrs(chunk.len()))?;
            let read = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(self.kvm_err("read MSRs"))?;
            saved.extend_from_slice(&msrs.as_slice()[..read]);
            // KVM stops at the first MSR it cannot read: skip that one.
            rest = &rest[(read + 1).min(rest.len())..];
        }
        Msrs::from_entries(&saved).map_err(|_| Error::TooManyMsrs(saved.len()))
    }

    /// Puts back a saved state, in the order KVM needs: CPUID before
    /// registers, the LAPIC before MSRs that arm its timer, pending events last.
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), Error> {
        self.fd
            .set_cpuid2(&state.cpuid)
            .map_err(self.kvm_err("restore CPUID"))?;
        if let Some(khz) = state.tsc_khz {
            if self.fd.get_tsc_khz().ok() != Some(khz) {
                self.fd
                    .set_tsc_khz(khz)
                    .map_err(self.kvm_err("restore the TSC frequency"))?;
            }
        }
        self.fd
            .set_mp_state(state.mp_state)
            .map_err(self.kvm_err("restore the MP state"))?;
        self.fd
            .set_regs(&state.regs)
            .map_err(self.kvm_err("restore registers"))?;
        self.fd
            .set_sregs(&state.sregs)
            .map_err(self.kvm_err("restore sregs"))?;
        // SAFETY: the buffer is a whole `kvm_xsave` read by KVM_GET_XSAVE, so
        // KVM reads no more than the struct holds.
        unsafe { self.fd.set_xsave(&state.xsave) }.map_err(self.kvm_err("restore XSAVE"))?;
        self.fd
            .set_xcrs(&state.xcrs)
            .map_err(self.kvm_err("restore XCRs"))?;
        self.fd
            .set_debug_regs(&state.debug_regs)
            .map_err(self.kvm_err("restore debug registers"))?;
        self.fd
            .set_lapic(&state.lapic)
            .map_err(self.kvm_err("restore the LAPIC"))?;
        let set = self
            .fd
            .set_msrs(&state.msrs)
            .map_err(self.kvm_err("restore MSRs"))?;
        if set != state.msrs.as_slice().len() {
            return Err(Error::Msrs {
                index: self.index,
                set,
                total: state.msrs.as_slice().len(),
            });
        }
        self.fd
            .set_vcpu_events(&state.vcpu_events)
            .map_err(self.kvm_err("restore vCPU events"))
    }
}

/// What a started vCPU thread is given to run.
type Job = (Vcpu, Arc<Buses>, bool);

/// A vCPU thread started ahead of its vCPU. It puts itself under the vCPU
/// seccomp filter, then waits for a vCPU to run: started while the VM is
/// being configured, it keeps the thread's creation and the kernel's filter
/// preparation (~0.1 ms each) off InstanceStart and snapshot loads.
pub struct VcpuThread {
    index: u8,
    thread: JoinHandle<()>,
    jobs: Sender<Job>,
    commands: Sender<Command>,
    acks: Receiver<Ack>,
}

impl VcpuThread {
    pub fn spawn(index: u8, exit: Arc<ExitSignal>, seccomp: Filters) -> Result<Self, Error> {
        install_kick_handler()?;
        let (job_tx, job_rx) = channel::<Job>();
        let (command_tx, command_rx) = channel();
        let (ack_tx, ack_rx) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("ember_vcpu{index}"))
            .spawn(move || {
                crate::signals::block_asynchronous();
                let filtered = seccomp.install(ThreadKind::Vcpu);
                // A thread whose VM never comes just ends.
                let Ok((vcpu, buses, paused)) = job_rx.recv() else {
                    return;
                };
                seccomp.selftest(ThreadKind::Vcpu);
                let vcpu_loop = VcpuLoop {
                    vcpu,
                    buses,
                    exit,
                    commands: command_rx,
                    acks: ack_tx,
                };
                match filtered {
                    Ok(()) => vcpu_loop.run(paused),
                    Err(e) => vcpu_loop.fail(format!("vCPU {index}: {e}")),
                }
            })
            .map_err(|source| Error::Spawn { index, source })?;
        Ok(VcpuThread {
            index,
            thread,
            jobs: job_tx,
            commands: command_tx,
            acks: ack_rx,
        })
    }

    /// Hands `vcpu` over: the thread runs the guest until told otherwise, or
    /// with `paused` waits for a resume first.
    pub fn run(self, vcpu: Vcpu, buses: Arc<Buses>, paused: bool) -> Result<VcpuHandle, Error> {
        self.jobs
            .send((vcpu, buses, paused))
            .map_err(|_| Error::Gone(self.index))?;
        Ok(VcpuHandle {
            index: self.index,
            thread: self.thread,
            commands: self.commands,
            acks: self.acks,
        })
    }
}

/// The main thread's end of a running vCPU.
pub struct VcpuHandle {
    index: u8,
    thread: JoinHandle<()>,
    commands: Sender<Command>,
    acks: Receiver<Ack>,
}

impl VcpuHandle {
    /// Sends `command` and kicks the thread out of guest mode to read it.
    fn send(&self, command: Command) -> Result<(), Error> {
        self.commands
            .send(command)
            .map_err(|_| Error::Gone(self.index))?;
        self.thread
            .kill(SIGRTMIN() + KICK_SIGNAL_OFFSET)
            .map_err(|_| Error::Gone(self.index))
    }

    fn wait(&self) -> Result<Ack, Error> {
        self.acks.recv().map_err(|_| Error::Gone(self.index))
    }

    /// Every vCPU's state; the vCPUs must be paused.
    pub fn save_all(handles: &[VcpuHandle], msrs: &Arc<[u32]>) -> Result<Vec<VcpuState>, Error> {
        handles.iter().try_for_each(|h| {
            h.commands
                .send(Command::Save(msrs.clone()))
                .map_err(|_| Error::Gone(h.index))
        })?;
        handles
            .iter()
            .map(|h| match h.wait()? {
                Ack::Saved(state) => state.map(|s| *s),
                _ => Err(Error::Gone(h.index)),
            })
            .collect()
    }

    /// Stops every vCPU out of guest mode and waits until all have.
    pub fn pause_all(handles: &[VcpuHandle]) -> Result<(), Error> {
        Self::command_all(handles, Command::Pause)
    }

    pub fn resume_all(handles: &[VcpuHandle]) -> Result<(), Error> {
        Self::command_all(handles, Command::Resume)
    }

    fn command_all(handles: &[VcpuHandle], command: Command) -> Result<(), Error> {
        // Kick all first, then collect: the vCPUs stop in parallel.
        handles.iter().try_for_each(|h| h.send(command.clone()))?;
        handles
            .iter()
            .try_for_each(|h| match (h.wait()?, &command) {
                (Ack::Paused, Command::Pause) | (Ack::Resumed, Command::Resume) => Ok(()),
                _ => Err(Error::Gone(h.index)),
            })
    }
}

const KICK_SIGNAL_OFFSET: i32 = 0;

thread_local! {
    /// This thread's `kvm_run` area, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's live `kvm_run` mapping, set by the
        // vCPU loop before it first enters the guest and valid until the thread ends;
        // a volatile byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

fn install_kick_handler() -> Result<(), Error> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(SIGRTMIN() + KICK_SIGNAL_OFFSET, kick_handler)
            .map_err(Error::Signal);
    });
    result
}

struct VcpuLoop {
    vcpu: Vcpu,
    buses: Arc<Buses>,
    exit: Arc<ExitSignal>,
    commands: Receiver<Command>,
    acks: Sender<Ack>,
}

impl VcpuLoop {
    /// Reports a vCPU that cannot run, then only answers commands.
    fn fail(self, message: String) {
        log::error!("{message}");
        self.exit.raise(ExitReason::Fault(message));
        self.park();
    }

    fn run(mut self, paused: bool) {
        KVM_RUN.with(|run| run.set(self.vcpu.fd.get_kvm_run()));
        if paused && !self.serve_commands(true) {
            return;
        }
        loop {
            let index = self.vcpu.index;
            let exit = self.vcpu.fd.run();
            // Writes KVM held back came before whatever made this exit.
            if let Some(held) = &self.buses.held_writes {
                held.replay(&self.buses.mmio);
            }
            let stop = match exit {
                Ok(VcpuExit::IoIn(port, data)) => {
                    METRICS.vcpu.exit_io_in.inc();
                    self.buses.pio.read(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    METRICS.vcpu.exit_io_out.inc();
                    self.buses.pio.write(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    METRICS.vcpu.exit_mmio_read.inc();
                    self.buses.mmio.read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    METRICS.vcpu.exit_mmio_write.inc();
                    self.buses.mmio.write(addr, data);
                    None
                }
                Ok(VcpuExit::Shutdown) => Some(ExitReason::GuestReset),
                Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::GuestShutdown,
                    _ => ExitReason::GuestReset,
                }),
                Ok(VcpuExit::Hlt) => Some(ExitReason::GuestShutdown),
                Ok(VcpuExit::FailEntry(reason, cpu)) => Some(ExitReason::Fault(format!(
                    "vCPU {index} failed to enter the guest: reason {reason:#x} on host CPU {cpu}"
                ))),
                Ok(VcpuExit::InternalError) => Some(ExitReason::Fault(format!(
                    "vCPU {index}: KVM internal error"
                ))),
                Ok(other) => Some(ExitReason::Fault(format!(
                    "vCPU {index}: unexpected exit {other:?}"
                ))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.vcpu.fd.set_kvm_immediate_exit(0);
                    if self.serve_commands(false) {
                        None
                    } else {
                        return;
                    }
                }
                Err(e) => Some(ExitReason::Fault(format!(
                    "vCPU {index}: KVM_RUN failed: {e}"
                ))),
            };
            if let Some(reason) = stop {
                if let ExitReason::Fault(message) = &reason {
                    METRICS.vcpu.failures.inc();
                    log::error!("{message}");
                }
                self.exit.raise(reason);
                self.park();
                return;
            }
        }
    }

    /// Handles commands until the guest may run again: pending ones when
    /// running, all until a resume when `paused`. False once the main thread is gone.
    fn serve_commands(&mut self, mut paused: bool) -> bool {
        loop {
            let command = if paused {
                match self.commands.recv() {
                    Ok(command) => command,
                    Err(_) => return false,
                }
            } else {
                match self.commands.try_recv() {
                    Ok(command) => command,
                    Err(std::sync::mpsc::TryRecvError::Empty) => return true,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return false,
                }
            };
            if let Command::Pause | Command::Resume = command {
                paused = matches!(command, Command::Pause);
            }
            if self.acks.send(self.answer(command)).is_err() {
                return false;
            }
        }
    }

    fn answer(&self, command: Command) -> Ack {
        match command {
            Command::Pause => Ack::Paused,
            Command::Resume => Ack::Resumed,
            Command::Save(msrs) => Ack::Saved(self.vcpu.save_state(&msrs).map(Box::new)),
        }
    }

    /// After the guest stopped: keep acknowledging commands so nobody waits forever.
    fn park(&self) {
        while let Ok(command) = self.commands.recv() {
            if self.acks.send(self.answer(command)).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::arch::x86_64::regs::{BootEntry, BootProtocol};
    use crate::devices::bus::BusDevice;
    use crate::vstate::memory::{self, Pages};

    /// Logs every write it takes; reads say how many it has seen.
    struct Log(Vec<(u64, Vec<u8>)>);

    impl BusDevice for Log {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(u8::try_from(self.0.len()).unwrap_or(u8::MAX));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    /// A window outside RAM but inside the boot identity map.
    const WINDOW: u64 = 0x2000_0000;

    #[test]
    fn held_writes_reach_the_device_in_order_before_the_exit_that_follows_them() {
        let mem = memory::create(16, Pages::Small).unwrap();
        let vm = Vm::new(&mem, false).expect("a KVM VM: this test needs /dev/kvm");
        vm.fd()
            .register_coalesced_mmio(kvm_ioctls::IoEventAddress::Mmio(WINDOW), 4)
            .unwrap();
        // Two writes into the held window, a read just past it, then a port write.
        let code = [
            0xc6, 0x04, 0x25, 0x00, 0x00, 0x00, 0x20, 0x11, // mov byte [WINDOW], 0x11
            0x66, 0xc7, 0x04, 0x25, 0x02, 0x00, 0x00, 0x20, 0x33,
            0x22, // mov word [WINDOW+2], 0x2233
            0x8a, 0x04, 0x25, 0x04, 0x00, 0x00, 0x20, // mov al, [WINDOW+4]
            0xe6, 0x80, // out 0x80, al
        ];
        let entry = 0x10_0000;
        mem.write_slice(&code, GuestAddress(entry)).unwrap();
        let vcpu = Vcpu::new(&vm, 0).unwrap();
        let cpuid = vm.kvm().get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let boot = BootEntry {
            protocol: BootProtocol::Linux64,
            address: entry,
        };
        vcpu.configure(&cpuid, 1, Some((&mem, boot))).unwrap();
        let log = Arc::new(Mutex::new(Log(Vec::new())));
        let mut mmio = Bus::default();
        mmio.insert(WINDOW, 8, log.clone()).unwrap();
        let held = vcpu.map_held_writes().unwrap();
        let Vcpu { mut fd, .. } = vcpu;

        match fd.run().unwrap() {
            VcpuExit::MmioRead(addr, data) => {
                assert_eq!(addr, WINDOW + 4);
                assert!(log.lock().unwrap().0.is_empty(), "KVM held both writes");
                held.replay(&mmio);
                mmio.read(addr, data);
            }
            other => panic!("expected the read, got {other:?}"),
        }
        assert_eq!(
            log.lock().unwrap().0,
            [(0, vec![0x11]), (2, vec![0x33, 0x22])]
        );
        match fd.run().unwrap() {
            VcpuExit::IoOut(0x80, data) => assert_eq!(data, [2], "the read saw both writes"),
            other => panic!("expected the port write, got {other:?}"),
        }
        held.replay(&mmio);
        assert_eq!(log.lock().unwrap().0.len(), 2, "nothing replayed twice");
    }
}
