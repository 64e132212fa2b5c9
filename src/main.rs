//! The `ember` binary: flags, then the event loop.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::mpsc::channel;
use std::sync::Arc;

use ember::api::{self, ToVmm};
use ember::cli::{self, Command, Seccomp, USAGE};
use ember::config::VmConfig;
use ember::controller::{Controller, Request, VERSION};
use ember::event_loop::EventLoop;
use ember::exit::ExitSignal;
use ember::logger;
use ember::seccomp::{Filters, PendingVmmFilter};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Firecracker's exit codes for bad flags and bad configuration.
const EXIT_ARG_PARSING: i32 = 153;
const EXIT_BAD_CONFIGURATION: i32 = 152;
const EXIT_GENERIC: i32 = 1;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    // Guest memory, snapshots, logs and sockets are this process's alone,
    // whatever umask it was started with.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return 0;
        }
        Ok(Command::Version) => {
            println!("ember v{VERSION}");
            return 0;
        }
        Err(e) => {
            eprintln!("ember: {e}");
            return EXIT_ARG_PARSING;
        }
    };
    if let Err(e) = logger::init(
        &args.id,
        args.level,
        args.log_path.as_deref(),
        args.show_level,
        args.show_log_origin,
    ) {
        eprintln!("ember: {e}");
        return EXIT_ARG_PARSING;
    }

    // One malloc arena for all threads: glibc's extra arenas read
    // /proc/sys/vm/overcommit_memory when they shrink, which no thread's
    // seccomp filter should have to allow.
    // SAFETY: mallopt only tunes the allocator; it is called before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };

    // The vmm filter is prepared on a helper thread while start-up goes on,
    // and is on every thread before a request is served or a file is read.
    let filters = match &args.seccomp {
        Seccomp::Builtin => Filters::builtin(),
        Seccomp::Custom(path) => Filters::from_json_file(Path::new(path)),
        Seccomp::Disabled => Ok(Filters::none()),
    };
    let filters = match filters {
        Ok(filters) => filters.with_selftest(args.seccomp_selftest),
        Err(e) => return fail(EXIT_BAD_CONFIGURATION, &e.to_string()),
    };
    let mut vmm_filter = match filters.enter_vmm_in_background() {
        Ok(pending) => Some(pending),
        Err(e) => return fail(EXIT_GENERIC, &e.to_string()),
    };
    let mut filtered = || match vmm_filter.take().map(PendingVmmFilter::wait) {
        Some(Err(e)) => Err(fail(EXIT_GENERIC, &e.to_string())),
        _ => Ok(()),
    };

    let exit = match ExitSignal::new() {
        Ok(e) => Arc::new(e),
        Err(e) => {
            return fail(
                EXIT_GENERIC,
                &format!("cannot create the exit eventfd: {e}"),
            )
        }
    };
    let mut event_loop = match EventLoop::new(exit.clone()) {
        Ok(l) => l,
        Err(e) => return fail(EXIT_GENERIC, &format!("cannot create the event loop: {e}")),
    };
    let mut controller = Controller::new(args.id.clone(), args.boot_timer, filters.clone(), exit);

    // The socket comes first: a client may connect while a config file boots.
    let mut socket_path = None;
    if let Some(path) = &args.api_sock {
        let listener = match UnixListener::bind(path) {
            Ok(l) => l,
            Err(e) => {
                return fail(
                    EXIT_GENERIC,
                    &format!("cannot bind the API socket '{path}': {e}"),
                )
            }
        };
        socket_path = Some(path.clone());
        let (calls_tx, calls_rx) = channel();
        let wake = match EventFd::new(EFD_NONBLOCK) {
            Ok(w) => Arc::new(w),
            Err(e) => return fail(EXIT_GENERIC, &format!("cannot create the API eventfd: {e}")),
        };
        if let Err(e) = event_loop.add_api(calls_rx, wake.clone()) {
            return fail(EXIT_GENERIC, &format!("cannot watch the API: {e}"));
        }
        if let Err(code) = filtered() {
            return code;
        }
        if let Err(e) = api::spawn(listener, ToVmm::new(calls_tx, wake), filters) {
            return fail(EXIT_GENERIC, &format!("cannot start the API thread: {e}"));
        }
    }

    if let Err(code) = filtered() {
        return code;
    }
    // With the API up (or without one), make the VM ready while configuration goes on.
    controller.prepare();

    if let Some(path) = &args.config_file {
        let config = std::fs::read(path)
            .map_err(|e| format!("cannot read config file '{path}': {e}"))
            .and_then(|bytes| {
                serde_json::from_slice::<VmConfig>(&bytes)
                    .map_err(|e| format!("invalid config file '{path}': {e}"))
            })
            .and_then(|config| controller.apply_config(config).map_err(|e| e.to_string()))
            .and_then(|()| {
                controller
                    .handle(Request::StartInstance)
                    .map_err(|e| e.to_string())
            });
        if let Err(message) = config {
            remove_socket(&socket_path);
            return fail(EXIT_BAD_CONFIGURATION, &message);
        }
    }

    let reason = event_loop.run(&mut controller);
    log::info!("ember exiting: {reason:?}");
    remove_socket(&socket_path);
    remove_socket(&controller.vsock_socket().map(str::to_string));
    reason.exit_code()
}

fn fail(code: i32, message: &str) -> i32 {
    log::error!("{message}");
    // stderr may be a full, non-blocking pipe by now: eprintln! would panic.
    let _ = writeln!(std::io::stderr(), "ember: {message}");
    code
}

fn remove_socket(path: &Option<String>) {
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}
