//! The `ember` binary: flags, then the event loop.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::mpsc::channel;
use std::sync::Arc;

use ember::api::{self, ToVmm};
use ember::cli::{self, Args, Command, Seccomp, USAGE};
use ember::config::VmConfig;
use ember::controller::{Controller, KvmLauncher, Request, VmmController, VERSION};
use ember::event_loop::EventLoop;
use ember::exit::ExitSignal;
use ember::logger;
use ember::metrics::METRICS;
use ember::persist;
use ember::seccomp::{Filters, PendingVmmFilter};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Firecracker's exit codes for bad flags and bad configuration.
const EXIT_ARG_PARSING: i32 = 153;
const EXIT_BAD_CONFIGURATION: i32 = 152;
const EXIT_GENERIC: i32 = 1;

fn main() {
    std::process::exit(run());
}

/// Why ember stops before its event loop runs: an exit code and what to say.
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

fn run() -> i32 {
    // Guest memory, snapshots, logs and sockets are this process's alone,
    // whatever umask it was started with.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => return 0,
        Err(code) => return code,
    };
    // One malloc arena for all threads: glibc's extra arenas read
    // /proc/sys/vm/overcommit_memory when they shrink, which no thread's
    // seccomp filter should have to allow.
    // SAFETY: mallopt only tunes the allocator; it is called before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    ember::signals::install();

    let mut socket_path = None;
    match start(&args, &mut socket_path) {
        Ok((mut event_loop, mut controller)) => {
            let reason = event_loop.run(&mut controller);
            log::info!("ember exiting: {reason:?}");
            // The last line holds what happened since the previous flush, as in Firecracker.
            if METRICS.is_configured() {
                if let Err(e) = METRICS.flush() {
                    log::warn!("last metrics flush: {e}");
                }
            }
            remove_socket(&socket_path);
            remove_socket(&controller.vsock_socket().map(str::to_string));
            // So that the kernel, destroying the VM as the process ends, need
            // not wait out a slow SRCU grace period for a VM that lived only
            // milliseconds.
            ember::vstate::vm::retire_replaced_buses();
            // The VM goes with the process: tearing it down first would only
            // make the exit wait for KVM twice over (an explicit close of the
            // VM stops KVM's per-VM threads one by one, where the exit kills
            // them at once) and would pull guest memory from under vCPUs
            // still running.
            std::mem::forget((event_loop, controller));
            reason.exit_code()
        }
        Err(failure) => {
            remove_socket(&socket_path);
            fail(failure.code, &failure.message)
        }
    }
}

/// The flags, with the logger they ask for installed; `None` when the
/// command was one answered here (`--help`, `--version`, `--snapshot-version`,
/// `--describe-snapshot`).
fn parse_args() -> Result<Option<Args>, i32> {
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(args)) => *args,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return Ok(None);
        }
        Ok(Command::Version) => {
            println!("ember v{VERSION}");
            return Ok(None);
        }
        Ok(Command::SnapshotVersion) => {
            println!("{}", persist::format_version());
            return Ok(None);
        }
        Ok(Command::DescribeSnapshot(path)) => {
            return match persist::describe(&path) {
                Ok(version) => {
                    println!("{version}");
                    Ok(None)
                }
                Err(e) => {
                    eprintln!("ember: {e}");
                    Err(EXIT_GENERIC)
                }
            };
        }
        Err(e) => {
            eprintln!("ember: {e}");
            return Err(EXIT_ARG_PARSING);
        }
    };
    if let Err(e) = logger::init(
        &args.id,
        args.level,
        args.log_path.as_deref(),
        args.show_level,
        args.show_log_origin,
        args.module.as_deref(),
    ) {
        eprintln!("ember: {e}");
        return Err(EXIT_ARG_PARSING);
    }
    Ok(Some(args))
}

/// Everything before the event loop: seccomp, the API, the VM readied ahead
/// and, with `--config-file`, the boot. `socket_path` is set once the API
/// socket exists, so that it is removed whatever happens next.
fn start(
    args: &Args,
    socket_path: &mut Option<String>,
) -> Result<(EventLoop, VmmController), Failure> {
    // The vmm filter is prepared on a helper thread while start-up goes on,
    // and is on every thread before a request is served or a file is read.
    let filters = match &args.seccomp {
        Seccomp::Builtin => Filters::builtin(),
        Seccomp::Custom(path) => Filters::from_json_file(Path::new(path)),
        Seccomp::Disabled => Ok(Filters::none()),
    }
    .map_err(|e| Failure::new(EXIT_BAD_CONFIGURATION, e.to_string()))?
    .with_selftest(args.seccomp_selftest);
    let mut vmm_filter = Some(
        filters
            .enter_vmm_in_background()
            .map_err(|e| Failure::new(EXIT_GENERIC, e.to_string()))?,
    );

    let exit = ExitSignal::new()
        .map(Arc::new)
        .map_err(|e| generic("cannot create the exit eventfd", e))?;
    let mut event_loop =
        EventLoop::new(exit.clone()).map_err(|e| generic("cannot create the event loop", e))?;
    let launcher = KvmLauncher::new(args.boot_timer, args.pci, filters.clone(), exit);
    let mut controller = Controller::new(args.id.clone(), launcher);
    controller.set_mmds_size_limit(args.mmds_size_limit);

    // Metrics first: a thread that breaks its filter leaves its last line there.
    if let Some(path) = &args.metrics_path {
        METRICS
            .configure(path)
            .map_err(|e| Failure::new(EXIT_BAD_CONFIGURATION, e.to_string()))?;
    }
    // The socket comes next: a client may connect while a config file boots.
    if let Some(path) = &args.api_sock {
        let listener = UnixListener::bind(path)
            .map_err(|e| generic(&format!("cannot bind the API socket '{path}'"), e))?;
        *socket_path = Some(path.clone());
        serve_api(
            listener,
            &mut event_loop,
            &mut vmm_filter,
            filters,
            args.http_api_max_payload_size,
        )?;
        log_start_up_time(args.start_time_us);
    }
    wait_for_filter(&mut vmm_filter)?;
    // Requests wait in the channel until the event loop runs, so none sees
    // the data store before the metadata is in.
    if let Some(path) = &args.metadata {
        load_metadata(&mut controller, path)
            .map_err(|message| Failure::new(EXIT_BAD_CONFIGURATION, message))?;
    }
    // With the API up (or without one), ready the vCPU threads while
    // configuration goes on; the VM itself waits for a sign of a boot.
    controller.get_ready();
    if let Some(path) = &args.config_file {
        boot_from_file(&mut controller, path)
            .map_err(|message| Failure::new(EXIT_BAD_CONFIGURATION, message))?;
    }
    Ok((event_loop, controller))
}

/// Connects the API to the event loop and, once every thread is filtered,
/// starts the API thread.
fn serve_api(
    listener: UnixListener,
    event_loop: &mut EventLoop,
    vmm_filter: &mut Option<PendingVmmFilter>,
    filters: Filters,
    max_payload: usize,
) -> Result<(), Failure> {
    let (calls_tx, calls_rx) = channel();
    let wake = EventFd::new(EFD_NONBLOCK)
        .map(Arc::new)
        .map_err(|e| generic("cannot create the API eventfd", e))?;
    event_loop
        .add_api(calls_rx, wake.clone())
        .map_err(|e| generic("cannot watch the API", e))?;
    wait_for_filter(vmm_filter)?;
    api::spawn(listener, ToVmm::new(calls_tx, wake), filters, max_payload)
        .map_err(|e| generic("cannot start the API thread", e))?;
    Ok(())
}

/// Logs, as Firecracker records it, how long ember took from the jailer's
/// start (`--start-time-us`, CLOCK_MONOTONIC microseconds) to a ready API.
fn log_start_up_time(start_time_us: Option<u64>) {
    let Some(start_time_us) = start_time_us else {
        return;
    };
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Read as `Instant::now` reads it, through the vDSO: no syscall for the
    // seccomp filters to judge.
    // SAFETY: `now` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) } != 0 {
        return;
    }
    let now_us = u64::try_from(now.tv_sec).unwrap_or_default() * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or_default() / 1_000;
    match now_us.checked_sub(start_time_us) {
        Some(us) => {
            METRICS.api_server.process_startup_time_us.set(us);
            log::info!("Process start-up time = {us} us (from --start-time-us to a ready API)")
        }
        None => log::warn!(
            "--start-time-us {start_time_us} is in the future of CLOCK_MONOTONIC ({now_us} us)"
        ),
    }
}

/// Waits, once, until the vmm filter is on every thread.
fn wait_for_filter(vmm_filter: &mut Option<PendingVmmFilter>) -> Result<(), Failure> {
    match vmm_filter.take().map(PendingVmmFilter::wait) {
        Some(Err(e)) => Err(Failure::new(EXIT_GENERIC, e.to_string())),
        _ => Ok(()),
    }
}

/// Starts the MMDS data store with the JSON document in `path`.
fn load_metadata(controller: &mut VmmController, path: &str) -> Result<(), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read metadata file '{path}': {e}"))?;
    let data = serde_json::from_slice(&bytes)
        .map_err(|e| format!("invalid metadata file '{path}': {e}"))?;
    controller
        .handle(Request::PutMmds(data))
        .map_err(|e| format!("metadata file '{path}': {e}"))?;
    Ok(())
}

/// Applies a `--config-file` and starts the VM it describes, or loads the
/// snapshot its `snapshot-load` section names.
fn boot_from_file(controller: &mut VmmController, path: &str) -> Result<(), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read config file '{path}': {e}"))?;
    let mut config =
        VmConfig::from_json(&bytes).map_err(|e| format!("invalid config file '{path}': {e}"))?;
    let load = config.snapshot_load.take();
    if let (Some(_), Some(section)) = (&load, config.machine_section()) {
        return Err(format!(
            "config file '{path}': '{section}' describes the machine, which the snapshot of \
             'snapshot-load' brings: a config file that loads one may set only the logger and metrics"
        ));
    }
    controller.apply_config(config).map_err(|e| e.to_string())?;
    let start = load.map_or(Request::StartInstance, Request::LoadSnapshot);
    controller.handle(start).map_err(|e| e.to_string())?;
    Ok(())
}

fn generic(what: &str, e: std::io::Error) -> Failure {
    Failure::new(EXIT_GENERIC, format!("{what}: {e}"))
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
