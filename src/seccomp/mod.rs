//! Seccomp: one BPF allowlist per kind of thread, compiled at build time
//! from `resources/seccomp/x86_64.json` (see `build.rs`), laid out as a
//! binary search on the syscall number ([`tree`]).
//!
//! The `vmm` filter goes on every thread (the main thread and all it starts)
//! before the API serves a request or a configuration file is read; the API
//! and vCPU threads then add their own, narrower one as their first act
//! (stacked filters: a syscall must pass both). A syscall outside a list
//! traps: the handler logs its number and the process dies of SIGSYS.

#[cfg(test)]
mod tree;

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Once};

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread, and every thread it starts.
    Vmm,
    Api,
    Vcpu,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Vcpu];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Api => "api",
            ThreadKind::Vcpu => "vcpu",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// What `--seccomp-selftest KIND[:PROBE]` makes the thread try, each a
/// syscall (or argument) no filter allows and that would be harmless if it
/// went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `acct(NULL)`, a syscall no thread needs.
    Acct,
    /// `execve("/")`.
    Execve,
    /// A new process (`clone` with fork's flags), which exits at once.
    Fork,
    /// Making a fresh page executable.
    MprotectExec,
    /// Signal 0 to another process.
    SignalOther,
}

impl Probe {
    pub const ALL: [Probe; 5] = [
        Probe::Acct,
        Probe::Execve,
        Probe::Fork,
        Probe::MprotectExec,
        Probe::SignalOther,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Probe::Acct => "acct",
            Probe::Execve => "execve",
            Probe::Fork => "fork",
            Probe::MprotectExec => "mprotect-exec",
            Probe::SignalOther => "signal-other",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Makes the forbidden call; returns only if the filter let it through.
    fn run(self) {
        // SAFETY: each call is harmless when allowed: acct(NULL) turns
        // accounting off, execve of a directory fails, the forked child exits
        // at once without touching anything, the page is fresh and unused,
        // and signal 0 only checks that the other process exists.
        unsafe {
            match self {
                Probe::Acct => {
                    libc::acct(std::ptr::null());
                }
                Probe::Execve => {
                    let argv = [std::ptr::null::<libc::c_char>()];
                    libc::execve(c"/".as_ptr(), argv.as_ptr(), argv.as_ptr());
                }
                Probe::Fork => {
                    let flags = libc::SIGCHLD as libc::c_ulong;
                    if libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) == 0 {
                        libc::_exit(0);
                    }
                }
                Probe::MprotectExec => {
                    let page = libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    if page != libc::MAP_FAILED {
                        libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC);
                    }
                }
                Probe::SignalOther => {
                    // init, or in a PID namespace of ember's own, its parent's side.
                    let other = if libc::getpid() == 1 { 2 } else { 1 };
                    libc::syscall(libc::SYS_tgkill, other, other, 0);
                }
            }
        }
    }
}

/// `--seccomp-selftest`: a thread of `kind` breaks its filter with `probe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selftest {
    pub kind: ThreadKind,
    pub probe: Probe,
}

impl Selftest {
    /// `KIND` or `KIND:PROBE` (the probe is `acct` if not named).
    pub fn parse(text: &str) -> Option<Selftest> {
        let (kind, probe) = text.split_once(':').unwrap_or((text, "acct"));
        Some(Selftest {
            kind: ThreadKind::from_name(kind)?,
            probe: Probe::from_name(probe)?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A --seccomp-filter file that cannot be read.
    #[error("cannot read seccomp filter file '{path}': {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A --seccomp-filter file seccompiler cannot compile.
    #[error("seccomp filter file '{path}': {source}")]
    Compile {
        path: String,
        source: seccompiler::Error,
    },
    /// A filter file must cover every kind of thread: an unfiltered thread is a hole.
    #[error("seccomp filter file '{path}' has no filter for the '{kind}' threads")]
    MissingKind { path: String, kind: &'static str },
    /// The filters compiled in at build time do not decode: a build error.
    #[error("the built-in seccomp filters are malformed")]
    Builtin,
    /// The thread that filters every thread at once (TSYNC) could not start.
    #[error("cannot start the thread that installs the seccomp filters: {0}")]
    Helper(std::io::Error),
    /// The thread that filters every thread at once (TSYNC) panicked.
    #[error("the thread that installs the seccomp filters panicked")]
    HelperPanicked,
    /// The kernel refused a filter: a thread left unfiltered must not go on.
    #[error("cannot install the '{kind}' seccomp filter: {source}")]
    Install {
        kind: &'static str,
        source: seccompiler::Error,
    },
}

/// The filters of a run: built in, from `--seccomp-filter`, or none (`--no-seccomp`).
#[derive(Clone, Default)]
pub struct Filters {
    programs: Option<Arc<[BpfProgram; 3]>>,
    /// `--seccomp-selftest`: the thread that breaks its filter on purpose, and how.
    selftest: Option<Selftest>,
}

const BUILTIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_filters.bpf"));

impl Filters {
    /// No filtering at all.
    pub fn none() -> Self {
        Filters::default()
    }

    pub fn builtin() -> Result<Self, Error> {
        let mut rest = BUILTIN;
        let mut next_program = || -> Option<BpfProgram> {
            let (count, tail) = rest.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*count) as usize * 8;
            let (code, tail) = tail.split_at_checked(len)?;
            rest = tail;
            Some(
                code.chunks_exact(8)
                    .map(|i| seccompiler::sock_filter {
                        code: u16::from_le_bytes([i[0], i[1]]),
                        jt: i[2],
                        jf: i[3],
                        k: u32::from_le_bytes([i[4], i[5], i[6], i[7]]),
                    })
                    .collect(),
            )
        };
        let programs = [next_program(), next_program(), next_program()];
        match programs {
            [Some(vmm), Some(api), Some(vcpu)] if rest.is_empty() => Ok(Filters {
                programs: Some(Arc::new([vmm, api, vcpu])),
                selftest: None,
            }),
            _ => Err(Error::Builtin),
        }
    }

    /// Compiles a JSON file in the format of `resources/seccomp/x86_64.json`.
    pub fn from_json_file(path: &Path) -> Result<Self, Error> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| Error::Read {
            path: shown.clone(),
            source,
        })?;
        let mut map =
            seccompiler::compile_from_json(file, TargetArch::x86_64).map_err(|source| {
                Error::Compile {
                    path: shown.clone(),
                    source,
                }
            })?;
        let mut take = |kind: ThreadKind| {
            map.remove(kind.name()).ok_or(Error::MissingKind {
                path: shown.clone(),
                kind: kind.name(),
            })
        };
        Ok(Filters {
            programs: Some(Arc::new([
                take(ThreadKind::Vmm)?,
                take(ThreadKind::Api)?,
                take(ThreadKind::Vcpu)?,
            ])),
            selftest: None,
        })
    }

    /// Test hook (`--seccomp-selftest KIND[:PROBE]`): right after a thread of
    /// that kind installs its filter, it makes a call no filter allows.
    pub fn with_selftest(mut self, selftest: Option<Selftest>) -> Self {
        self.selftest = selftest;
        self
    }

    /// Starts putting every thread of the process under the `vmm` filter and
    /// the two stacked on it ([`own_process_filters`], compiled there too),
    /// from a helper thread: the kernel spends a few hundred microseconds
    /// preparing a filter (it evaluates it for every syscall number to cache
    /// the always-allowed ones), which then overlaps the main thread's
    /// start-up. Nothing may be served before [`PendingVmmFilter::wait`].
    pub fn enter_vmm_in_background(&self) -> Result<PendingVmmFilter, Error> {
        let install = match &self.programs {
            Some(programs) => {
                let programs = programs.clone();
                let handle = std::thread::Builder::new()
                    .name("ember_seccomp".into())
                    .spawn(move || {
                        install_sigsys_handler();
                        let stacked = own_process_filters(std::process::id())?;
                        // TSYNC gives the filters (and no_new_privs) to every thread.
                        for program in [&programs[ThreadKind::Vmm as usize]]
                            .into_iter()
                            .chain(&stacked)
                        {
                            seccompiler::apply_filter_all_threads(program).map_err(|source| {
                                Error::Install {
                                    kind: ThreadKind::Vmm.name(),
                                    source,
                                }
                            })?;
                        }
                        Ok(())
                    })
                    .map_err(Error::Helper)?;
                Some(handle)
            }
            None => None,
        };
        Ok(PendingVmmFilter {
            install,
            filters: self.clone(),
        })
    }

    /// Puts the calling thread under the filter of `kind`, then runs the
    /// self-test hook if it is for `kind`.
    pub fn enter(&self, kind: ThreadKind) -> Result<(), Error> {
        self.install(kind)?;
        self.selftest(kind);
        Ok(())
    }

    /// Puts the calling thread under the filter of `kind`.
    pub fn install(&self, kind: ThreadKind) -> Result<(), Error> {
        let Some(programs) = &self.programs else {
            return Ok(());
        };
        let program = &programs[kind as usize];
        THREAD_KIND.with(|k| k.set(kind.name()));
        if !program.is_empty() {
            install_sigsys_handler();
            seccompiler::apply_filter(program).map_err(|source| Error::Install {
                kind: kind.name(),
                source,
            })?;
        }
        Ok(())
    }

    /// `--seccomp-selftest`: breaks the filter, if this thread is of the kind asked for.
    pub fn selftest(&self, kind: ThreadKind) {
        match self.selftest {
            Some(test) if test.kind == kind => test.probe.run(),
            _ => {}
        }
    }
}

/// The filters stacked on the built-in `vmm` one (every thread runs under
/// them), for what a filter compiled at build time cannot say:
/// - `clone3` fails with `ENOSYS`: its flags are behind a pointer, out of a
///   filter's reach, and the C library then falls back to `clone`, whose
///   flags the `vmm` filter checks (threads only);
/// - `tgkill` reaches this process's own threads only (its pid is known at
///   run time), so a signal can never leave the process.
fn own_process_filters(pid: u32) -> Result<[BpfProgram; 2], Error> {
    let compile = |rules: Vec<SeccompRule>, syscall: libc::c_long, action| {
        SeccompFilter::new(
            BTreeMap::from([(syscall, rules)]),
            SeccompAction::Allow,
            action,
            TargetArch::x86_64,
        )
        .and_then(BpfProgram::try_from)
        .map_err(|_| Error::Builtin)
    };
    let other_process =
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, pid.into())
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|_| Error::Builtin)?;
    Ok([
        compile(
            vec![],
            libc::SYS_clone3,
            SeccompAction::Errno(libc::ENOSYS as u32),
        )?,
        compile(vec![other_process], libc::SYS_tgkill, SeccompAction::Trap)?,
    ])
}

/// The `vmm` filter on its way in; see [`Filters::enter_vmm_in_background`].
pub struct PendingVmmFilter {
    install: Option<std::thread::JoinHandle<Result<(), Error>>>,
    filters: Filters,
}

impl PendingVmmFilter {
    /// Waits until every thread is under the `vmm` filter.
    pub fn wait(self) -> Result<(), Error> {
        if let Some(install) = self.install {
            install.join().map_err(|_| Error::HelperPanicked)??;
        }
        self.filters.selftest(ThreadKind::Vmm);
        Ok(())
    }
}

thread_local! {
    /// The filter this thread entered last, for the SIGSYS handler's message;
    /// a thread that entered none runs under the `vmm` filter it inherited.
    static THREAD_KIND: std::cell::Cell<&'static str> = const { std::cell::Cell::new("vmm") };
}

/// Where the SIGSYS handler writes besides stderr: the log file, if any.
static LOG_FD: AtomicI32 = AtomicI32::new(-1);

/// Lets the SIGSYS handler also report to `--log-path`'s file.
pub fn set_log_fd(fd: i32) {
    LOG_FD.store(fd, Ordering::Relaxed);
}

/// A dying thread's last log line, from `parts`, on stderr and in the log
/// file: async-signal-safe, nothing but `write`.
pub fn write_last_line(parts: &[&[u8]]) {
    for fd in [2, LOG_FD.load(Ordering::Relaxed)] {
        if fd < 0 {
            continue;
        }
        for part in parts {
            // SAFETY: write(2) of a live buffer is async-signal-safe.
            unsafe { libc::write(fd, part.as_ptr().cast(), part.len()) };
        }
    }
}

fn install_sigsys_handler() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: the handler takes SA_SIGINFO's arguments and only makes
        // async-signal-safe calls.
        unsafe {
            crate::signals::set_handler(
                libc::SIGSYS,
                sigsys_handler as *const () as usize,
                libc::SA_SIGINFO,
            );
        }
    });
}

/// Writes `ember: seccomp: a <kind> thread made syscall <n> outside its
/// allowlist` and dies of SIGSYS. Formats by hand and makes no syscall but
/// write: nothing here may allocate or lock, and the filter is still on.
extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: for a SIGSYS raised by seccomp, siginfo's union holds
    // `_sigsys { void *call_addr; int syscall; unsigned arch; }` right after
    // the three leading ints and their padding (byte 16), so the syscall
    // number is the int at byte 24.
    let syscall = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    let kind = THREAD_KIND.with(std::cell::Cell::get);
    let mut digits = [0u8; 12];
    let mut at = digits.len();
    let mut n = syscall.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let parts: [&[u8]; 5] = [
        b"ember: seccomp: a ",
        kind.as_bytes(),
        b" thread made syscall ",
        &digits[at..],
        b" outside its allowlist; exiting\n",
    ];
    write_last_line(&parts);
    crate::metrics::write_last_words("seccomp", "num_faults");
    // The next SIGSYS kills: from raise() below where the thread's filter
    // allows it (delivered once this handler unblocks it), or else from the
    // kernel forcing the trap of raise's own syscalls, which it does with the
    // default action while SIGSYS is blocked. As PID 1 of a PID namespace (the
    // jailer's --new-pid-ns) a signal with its default action is ignored, so
    // exit_group follows, with the status a shell gives death by SIGSYS.
    // SAFETY: restoring the default action, raising, unblocking a signal and
    // exiting are async-signal-safe; the set is a local, initialized by
    // sigemptyset before use.
    unsafe {
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        libc::raise(libc::SIGSYS);
        let mut sigsys: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut sigsys);
        libc::sigaddset(&mut sigsys, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &sigsys, std::ptr::null_mut());
        libc::syscall(libc::SYS_exit_group, 128 + libc::SIGSYS);
    }
}
