//! Fatal signals, as Firecracker reports them: a SIGBUS, SIGSEGV, SIGILL,
//! SIGXFSZ, SIGXCPU or SIGHUP is logged (stderr and `--log-path`) and counted
//! in a last metrics line (`signals.<name>`), then ends ember as it would have
//! without a handler.
//!
//! Handlers are installed with SA_RESETHAND, so the default action is back
//! before the handler runs and nothing in it needs a syscall that a thread's
//! seccomp filter may lack: a fault returns to the faulting instruction and
//! faults again, an asynchronous signal is raised again on the event loop's
//! thread, the only one that does not block them ([`block_asynchronous`]).
//!
//! SIGTERM, a platform's usual stop, still ends ember as it would without a
//! handler, but first the handler has KVM free what would make the VM's
//! teardown wait ([`crate::vstate::vm::retire_replaced_buses`]).

use std::sync::Once;

/// The signals handled, with their names in the log and the metrics.
const FATAL: [(libc::c_int, &str); 6] = [
    (libc::SIGBUS, "sigbus"),
    (libc::SIGSEGV, "sigsegv"),
    (libc::SIGILL, "sigill"),
    (libc::SIGXFSZ, "sigxfsz"),
    (libc::SIGXCPU, "sigxcpu"),
    (libc::SIGHUP, "sighup"),
];

/// Signals the kernel directs at the process rather than at the faulting
/// thread: only the event loop's thread takes them, where raising one again
/// is allowed.
const ASYNCHRONOUS: [libc::c_int; 3] = [libc::SIGXFSZ, libc::SIGXCPU, libc::SIGHUP];

/// Installs the handlers; once, at start-up.
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        for (signal, _) in FATAL {
            // SAFETY: the handler takes SA_SIGINFO's arguments and only makes
            // async-signal-safe calls; SA_ONSTACK puts it on Rust's alternate
            // stacks, for a stack overflow.
            unsafe {
                set_handler(
                    signal,
                    fatal_handler as *const () as usize,
                    libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND,
                );
            }
        }
        // SAFETY: a one-argument handler that makes one ioctl and raises.
        unsafe {
            set_handler(
                libc::SIGTERM,
                terminate_handler as *const () as usize,
                libc::SA_RESETHAND,
            );
        }
    });
}

/// Installs `handler` for `signal`, with `flags` and no signal masked while it runs.
///
/// # Safety
/// `handler` is an `extern "C"` function taking the arguments `flags` says
/// (three with `SA_SIGINFO`, else one), and it makes only async-signal-safe calls.
pub(crate) unsafe fn set_handler(signal: libc::c_int, handler: usize, flags: libc::c_int) {
    // SAFETY: a zeroed sigaction with an empty mask is a valid one; the caller
    // vouches for the handler.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = flags;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

/// Keeps the asynchronous fatal signals and SIGTERM off the calling thread
/// (the API and vCPU threads), so that they reach the event loop's, whose
/// seccomp filter allows what their handlers do.
pub fn block_asynchronous() {
    // SAFETY: the set is a local initialized by sigemptyset; changing this
    // thread's mask has no other effect.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in ASYNCHRONOUS.into_iter().chain([libc::SIGTERM]) {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

extern "C" fn fatal_handler(signal: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let Some(&(_, name)) = FATAL.iter().find(|(s, _)| *s == signal) else {
        return;
    };
    let upper = name.as_bytes();
    let mut shown = [0u8; 8];
    for (slot, byte) in shown.iter_mut().zip(upper) {
        *slot = byte.to_ascii_uppercase();
    }
    let parts: [&[u8]; 3] = [b"ember: caught ", &shown[..upper.len()], b"; exiting\n"];
    crate::seccomp::write_last_line(&parts);
    crate::metrics::write_last_words("signals", name);
    if ASYNCHRONOUS.contains(&signal) {
        // SAFETY: raise is async-signal-safe; the default action is back
        // (SA_RESETHAND), and the signal is delivered when this returns.
        unsafe { libc::raise(signal) };
    }
}

extern "C" fn terminate_handler(signal: libc::c_int) {
    crate::vstate::vm::retire_replaced_buses();
    // SAFETY: raise is async-signal-safe; the default action is back
    // (SA_RESETHAND), and the signal is delivered when this returns.
    unsafe { libc::raise(signal) };
}
