//! The shim v2 task service: containerd's calls for one task (a function VM or
//! a pod sandbox), mapped onto a jailed ember.
//!
//! One shim process serves one task (containerd starts a shim per container).
//! The task's process is ember itself (the jailer execs it in place), so its
//! exit status is the VM's: 0 after the guest reset, 1 after a fault, 128+n
//! after signal n. The subreaper thread of the `containerd-shim` crate reaps
//! it and tells [`Service::watch`].

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use containerd_shim as shim;
use log::{info, warn};
use shim::api::{self, Status};
use shim::monitor::{monitor_subscribe, wait_pid, Topic};
use shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskPaused, TaskResumed, TaskStart,
};
use shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use shim::protos::protobuf::{MessageDyn, MessageField};
use shim::protos::topics;
use shim::protos::ttrpc::{self, get_status, Code};
use shim::protos::types::mount::Mount;
use shim::protos::types::task::ProcessInfo;
use shim::publisher::RemotePublisher;
use shim::{Config, DeleteResponse, ExitSignal, Flags, TtrpcContext, TtrpcResult};

use crate::cache::{self, Cache, Claim};
use crate::ember_api;
use crate::function::{self, Function, Network, TaskKind};
use crate::netns;
use crate::record::Record;
use crate::vm::{self, Binaries, Layout, Start};

#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    /// Set once containerd may call: the publisher exists only in the server.
    publisher: Option<RemotePublisher>,
    tasks: Mutex<HashMap<String, Task>>,
    /// Signalled whenever a task stops.
    stopped: Condvar,
    exit: Arc<ExitSignal>,
}

struct Task {
    bundle: PathBuf,
    stdout: String,
    stderr: String,
    kind: Kind,
    pid: u32,
    status: Status,
    exit: Option<(u32, Timestamp)>,
    /// How long `create` took (the image's mount, the digest, the jail).
    create_time: Duration,
}

enum Kind {
    Function(Box<vm::Prepared>),
    /// A function VM prepared at start: it runs in a network namespace the shim
    /// made at create, which a client's CNI plugins set up in between.
    Deferred(Box<Deferred>),
    Sandbox,
}

struct Deferred {
    function: Function,
    holder: netns::Holder,
}

/// A failed call as containerd reads it.
fn status(code: Code, message: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(get_status(code, message.to_string()))
}

fn no_task(id: &str) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("no task {id}"))
}

fn now() -> Timestamp {
    shim::util::timestamp().unwrap_or_default()
}

impl shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            inner: Arc::new(Inner {
                namespace: args.namespace.clone(),
                publisher: None,
                tasks: Mutex::new(HashMap::new()),
                stopped: Condvar::new(),
                exit: Arc::new(ExitSignal::default()),
            }),
        }
    }

    fn start_shim(&mut self, opts: shim::StartOpts) -> Result<String, shim::Error> {
        let id = opts.id.clone();
        let (_, address) = shim::spawn(opts, &id, Vec::new())?;
        Ok(address)
    }

    /// containerd's clean-up after a shim that died: the VM it left, its jail,
    /// cgroups and uid, and the image's mount.
    fn delete_shim(&mut self) -> Result<DeleteResponse, shim::Error> {
        let bundle = std::env::current_dir().map_err(|e| shim::Error::Other(e.to_string()))?;
        if let Some(record) = Record::load(&bundle) {
            record.kill_and_clean_up();
        }
        unmount_rootfs(&bundle);
        netns::remove(&bundle);
        let mut response = DeleteResponse::new();
        response.exit_status = 128 + 9;
        response.exited_at = MessageField::some(now());
        Ok(response)
    }

    fn wait(&mut self) {
        self.inner.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service {
            inner: Arc::new(Inner {
                namespace: self.inner.namespace.clone(),
                publisher: Some(publisher),
                tasks: Mutex::new(HashMap::new()),
                stopped: Condvar::new(),
                exit: self.inner.exit.clone(),
            }),
        }
    }
}

impl Service {
    fn tasks(&self) -> MutexGuard<'_, HashMap<String, Task>> {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Some(publisher) = &self.inner.publisher {
            if let Err(e) = publisher.publish(
                shim::Context::default(),
                topic,
                &self.inner.namespace,
                event,
            ) {
                warn!("cannot publish {topic}: {e}");
            }
        }
    }

    /// Marks task `id` stopped with `code` and tells containerd.
    fn stopped(&self, id: &str, code: u32) {
        let (pid, exited_at) = {
            let mut tasks = self.tasks();
            let Some(task) = tasks.get_mut(id) else {
                return;
            };
            if task.status == Status::STOPPED {
                return;
            }
            let exited_at = now();
            task.status = Status::STOPPED;
            task.exit = Some((code, exited_at.clone()));
            (task.pid, exited_at)
        };
        self.inner.stopped.notify_all();
        let mut event = TaskExit::new();
        event.container_id = id.to_owned();
        event.id = id.to_owned();
        event.pid = pid;
        event.exit_status = code;
        event.exited_at = MessageField::some(exited_at);
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event));
        info!("task {id} (pid {pid}) exited with {code}");
    }

    /// Pauses or resumes task `id`'s VM through ember's API (`PATCH /vm`).
    fn set_vm_state(&self, id: &str, from: Status, to: Status) -> Result<(), ttrpc::Error> {
        let socket = {
            let tasks = self.tasks();
            let task = tasks.get(id).ok_or_else(|| no_task(id))?;
            match &task.kind {
                Kind::Function(prepared) if task.status == from => prepared.layout.api_socket(),
                Kind::Function(_) => {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("the task is {:?}, not {from:?}", task.status),
                    ))
                }
                Kind::Sandbox => {
                    return Err(status(Code::UNIMPLEMENTED, "a pod sandbox runs no VM"))
                }
                Kind::Deferred(_) => {
                    return Err(status(Code::FAILED_PRECONDITION, "the task is not started"))
                }
            }
        };
        let state = if to == Status::PAUSED {
            "Paused"
        } else {
            "Resumed"
        };
        ember_api::call(
            &socket,
            "PATCH",
            "/vm",
            &format!(r#"{{"state": "{state}"}}"#),
        )
        .map_err(|e| status(Code::INTERNAL, e))?;
        if let Some(task) = self.tasks().get_mut(id) {
            if task.status == from {
                task.status = to;
            }
        }
        Ok(())
    }

    /// Waits on a thread of its own for the VM of task `id` to exit.
    fn watch(&self, id: String, pid: u32, subscription: shim::monitor::Subscription) {
        let service = self.clone();
        std::thread::spawn(move || {
            let code = wait_pid(i32::try_from(pid).unwrap_or(i32::MAX), subscription);
            service.stopped(&id, u32::try_from(code).unwrap_or(1));
        });
    }
}

/// The task's stdout or stderr: its FIFO, the file of a `file://` log URI
/// (appended to), or /dev/null without either.
fn open_stdio(uri: &str) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).custom_flags(libc::O_CLOEXEC);
    if uri.is_empty() {
        return options.open("/dev/null");
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return options.create(true).append(true).mode(0o640).open(path);
    }
    if uri.contains("://") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("the log URI '{uri}' (ember's shim takes FIFOs and file:// URIs)"),
        ));
    }
    options.open(uri)
}

/// What the function runtime prints once it serves (see `resources/unikernel/rt`).
const READY_MARKER: &[u8] = b"EMBER-FN: ready on port";

/// Taking a function's first snapshot, once its first VM is ready.
struct SnapshotJob {
    task: String,
    key: String,
    /// ember's API socket, and where in the jail it writes the snapshot.
    api: PathBuf,
    taken: PathBuf,
    claim: Claim,
}

impl SnapshotJob {
    /// Pauses the VM, snapshots it, resumes it, and stores the snapshot.
    fn run(self) {
        let state = format!("/{}/{}", vm::SNAPSHOT_DIR, cache::STATE_FILE);
        let memory = format!("/{}/{}", vm::SNAPSHOT_DIR, cache::MEMORY_FILE);
        let create = serde_json::json!({
            "snapshot_type": "Full",
            "snapshot_path": state,
            "mem_file_path": memory,
        });
        let paused = ember_api::call(&self.api, "PATCH", "/vm", r#"{"state": "Paused"}"#);
        let created = paused.and_then(|()| {
            ember_api::call(&self.api, "PUT", "/snapshot/create", &create.to_string())
        });
        let resumed = ember_api::call(&self.api, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
        let stored = created
            .and(resumed)
            .map_err(|e| e.to_string())
            .and_then(|()| self.claim.store(&self.taken).map_err(|e| e.to_string()));
        match stored {
            Ok(()) => info!(
                "task {}: snapshot {} stored; later tasks of this function restore from it",
                self.task, self.key
            ),
            Err(e) => warn!("task {}: no snapshot: {e}", self.task),
        }
    }
}

/// Copies the VM's console to the task's stdout until the VM exits, and
/// starts `job` the first time a line starts with [`READY_MARKER`]. Output the
/// task's stdout refuses is dropped, so the console never backs up into ember.
fn relay_console(mut console: std::io::PipeReader, mut stdout: File, job: SnapshotJob) {
    let mut job = Some(job);
    // How much of the marker the current line has matched; None once it differs.
    let mut matched = Some(0);
    let mut buffer = [0u8; 4096];
    loop {
        let n = match console.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let _ = stdout.write_all(&buffer[..n]);
        if job.is_none() {
            continue;
        }
        for &byte in &buffer[..n] {
            matched = match matched {
                _ if byte == b'\n' => Some(0),
                Some(k) if k < READY_MARKER.len() && READY_MARKER[k] == byte => Some(k + 1),
                Some(k) if k == READY_MARKER.len() => Some(k),
                _ => None,
            };
            if matched == Some(READY_MARKER.len()) {
                if let Some(job) = job.take() {
                    std::thread::spawn(move || job.run());
                }
            }
        }
    }
}

/// Prepares task `id`'s VM (see [`vm::prepare`]) in the network namespace
/// `netns`, if any.
fn prepare(
    id: &str,
    bundle: &Path,
    function: &Function,
    netns: Option<&str>,
    binaries: &Binaries,
) -> Result<Kind, ttrpc::Error> {
    let layout = Layout::new(bundle, id, function.cgroups_path.as_deref());
    let cache = Cache::from_env();
    vm::prepare(layout, function, netns, &rootfs(bundle), binaries, &cache)
        .map(|prepared| Kind::Function(Box::new(prepared)))
        .map_err(|e| status(Code::INVALID_ARGUMENT, e))
}

fn rootfs(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

fn unmount_rootfs(bundle: &Path) {
    let root = rootfs(bundle);
    if let Err(e) = shim::mount::umount_recursive(root.to_str(), libc::MNT_DETACH) {
        warn!("cannot unmount {}: {e}", root.display());
    }
}

fn mount_rootfs(bundle: &Path, mounts: &[Mount]) -> Result<(), ttrpc::Error> {
    let target = rootfs(bundle);
    std::fs::create_dir_all(&target).map_err(|e| status(Code::INTERNAL, e))?;
    for m in mounts {
        shim::mount::mount_rootfs(Some(&m.type_), Some(&m.source), &m.options, &target)
            .map_err(|e| status(Code::INTERNAL, format!("cannot mount the image: {e}")))?;
    }
    Ok(())
}

impl shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let began = Instant::now();
        let bundle = PathBuf::from(&req.bundle);
        if self.tasks().contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("task {} exists", req.id),
            ));
        }
        if req.terminal {
            return Err(status(Code::INVALID_ARGUMENT, function::Error::Terminal));
        }
        let config = std::fs::read(bundle.join("config.json"))
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("config.json: {e}")))?;
        let kind = match function::parse(&config).map_err(|e| status(Code::INVALID_ARGUMENT, e))? {
            TaskKind::Sandbox => Kind::Sandbox,
            TaskKind::Function(function) => {
                let binaries =
                    Binaries::find().map_err(|e| status(Code::FAILED_PRECONDITION, e))?;
                mount_rootfs(&bundle, &req.rootfs)?;
                let prepared = match &function.network {
                    Network::New => vm::check_kernel(&function, &rootfs(&bundle))
                        .map_err(|e| status(Code::INVALID_ARGUMENT, e))
                        .and_then(|()| {
                            netns::Holder::create(&bundle).map_err(|e| status(Code::INTERNAL, e))
                        })
                        .map(|holder| Kind::Deferred(Box::new(Deferred { function, holder }))),
                    Network::Join(path) => {
                        prepare(&req.id, &bundle, &function, Some(path), &binaries)
                    }
                    Network::Host => prepare(&req.id, &bundle, &function, None, &binaries),
                };
                match prepared {
                    Ok(kind) => kind,
                    Err(e) => {
                        unmount_rootfs(&bundle);
                        return Err(e);
                    }
                }
            }
        };
        let pid = match &kind {
            Kind::Deferred(deferred) => deferred.holder.pid,
            _ => 0,
        };
        self.tasks().insert(
            req.id.clone(),
            Task {
                bundle: bundle.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                kind,
                pid,
                status: Status::CREATED,
                exit: None,
                create_time: began.elapsed(),
            },
        );
        let mut event = TaskCreate::new();
        event.container_id = req.id;
        event.bundle = req.bundle;
        event.rootfs = req.rootfs;
        event.pid = pid;
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event));
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let began = Instant::now();
        let pid = {
            let mut tasks = self.tasks();
            let task = tasks.get_mut(&req.id).ok_or_else(|| no_task(&req.id))?;
            if task.status != Status::CREATED {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    "the task was started already",
                ));
            }
            if let Kind::Deferred(deferred) = &task.kind {
                // The namespace is set up by now, as far as it will be.
                let binaries =
                    Binaries::find().map_err(|e| status(Code::FAILED_PRECONDITION, e))?;
                let path = netns::path(&task.bundle);
                let kind = prepare(
                    &req.id,
                    &task.bundle,
                    &deferred.function,
                    path.to_str(),
                    &binaries,
                )?;
                if let Kind::Deferred(deferred) = std::mem::replace(&mut task.kind, kind) {
                    deferred.holder.end();
                }
            }
            match &mut task.kind {
                Kind::Sandbox | Kind::Deferred(_) => std::process::id(),
                Kind::Function(prepared) => {
                    let (stdout, stderr) = (open_stdio(&task.stdout), open_stdio(&task.stderr));
                    let (stdout, stderr) = stdout
                        .and_then(|o| Ok((o, stderr?)))
                        .map_err(|e| status(Code::INTERNAL, format!("the task's stdio: {e}")))?;
                    let binaries =
                        Binaries::find().map_err(|e| status(Code::FAILED_PRECONDITION, e))?;
                    // The first VM of a function has its console relayed, to see
                    // when the function is ready for its snapshot.
                    let snapshot = match &mut prepared.start {
                        Start::Boot(claim) => claim.take(),
                        Start::Restore => None,
                    };
                    let (console, relay) = match &snapshot {
                        Some(_) => {
                            let (reader, writer) =
                                std::io::pipe().map_err(|e| status(Code::INTERNAL, e))?;
                            (File::from(std::os::fd::OwnedFd::from(writer)), Some(reader))
                        }
                        None => (
                            stdout.try_clone().map_err(|e| status(Code::INTERNAL, e))?,
                            None,
                        ),
                    };
                    // Subscribed before the spawn, so that even an instant exit is seen.
                    let subscription =
                        monitor_subscribe(Topic::Pid).map_err(|e| status(Code::INTERNAL, e))?;
                    let child = prepared
                        .spawn(&binaries.jailer, console, stderr)
                        .map_err(|e| status(Code::INTERNAL, e))?;
                    let pid = child.id();
                    Record::new(pid, prepared).save(&task.bundle);
                    self.watch(req.id.clone(), pid, subscription);
                    let how = match (&prepared.start, &snapshot) {
                        (Start::Restore, _) => "restored from snapshot",
                        (Start::Boot(_), Some(_)) => "booting, to take snapshot",
                        (Start::Boot(_), None) => "booting function",
                    };
                    info!(
                        "task {}: {how} {} (shim: create {} us, start {} us)",
                        req.id,
                        prepared.key,
                        task.create_time.as_micros(),
                        began.elapsed().as_micros()
                    );
                    if let (Some(claim), Some(relay)) = (snapshot, relay) {
                        let job = SnapshotJob {
                            task: req.id.clone(),
                            key: prepared.key.clone(),
                            api: prepared.layout.api_socket(),
                            taken: prepared.layout.root().join(vm::SNAPSHOT_DIR),
                            claim,
                        };
                        std::thread::spawn(move || relay_console(relay, stdout, job));
                    }
                    pid
                }
            }
        };
        {
            let mut tasks = self.tasks();
            if let Some(task) = tasks.get_mut(&req.id) {
                task.pid = pid;
                if task.status == Status::CREATED {
                    task.status = Status::RUNNING;
                }
            }
        }
        let mut event = TaskStart::new();
        event.container_id = req.id;
        event.pid = pid;
        self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(event));
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let tasks = self.tasks();
        let task = tasks.get(&req.id).ok_or_else(|| no_task(&req.id))?;
        let mut response = api::StateResponse {
            id: req.id.clone(),
            bundle: task.bundle.to_string_lossy().into_owned(),
            pid: task.pid,
            stdout: task.stdout.clone(),
            stderr: task.stderr.clone(),
            ..Default::default()
        };
        response.status = task.status.into();
        if let Some((code, at)) = &task.exit {
            response.exit_status = *code;
            response.exited_at = MessageField::some(at.clone());
        }
        Ok(response)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let signal = i32::try_from(req.signal)
            .map_err(|_| status(Code::INVALID_ARGUMENT, "no such signal"))?;
        let vm_pid = {
            let tasks = self.tasks();
            let task = tasks.get(&req.id).ok_or_else(|| no_task(&req.id))?;
            match (&task.kind, task.status) {
                (_, Status::STOPPED) => return Ok(api::Empty::new()),
                (Kind::Function(_), Status::RUNNING | Status::PAUSED) => Some(task.pid),
                _ => None,
            }
        };
        match vm_pid.and_then(|pid| libc::pid_t::try_from(pid).ok()) {
            Some(pid) => {
                // SAFETY: kill has no memory-safety preconditions; the pid is our
                // child's, unreaped until the watcher has marked the task stopped.
                if unsafe { libc::kill(pid, signal) } != 0 {
                    return Err(status(Code::INTERNAL, std::io::Error::last_os_error()));
                }
            }
            // A sandbox, or a VM never started: nothing runs, so it stops now.
            None => self.stopped(&req.id, 128 + req.signal),
        }
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut tasks = self.tasks();
        loop {
            let task = tasks.get(&req.id).ok_or_else(|| no_task(&req.id))?;
            if let Some((code, at)) = &task.exit {
                return Ok(api::WaitResponse {
                    exit_status: *code,
                    exited_at: MessageField::some(at.clone()),
                    ..Default::default()
                });
            }
            tasks = self
                .inner
                .stopped
                .wait(tasks)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut task = {
            let mut tasks = self.tasks();
            let task = tasks.get(&req.id).ok_or_else(|| no_task(&req.id))?;
            if matches!(task.status, Status::RUNNING | Status::PAUSED) {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    "the task is running: kill it first",
                ));
            }
            tasks
                .remove(&req.id)
                .ok_or_else(|| status(Code::NOT_FOUND, "gone"))?
        };
        match std::mem::replace(&mut task.kind, Kind::Sandbox) {
            Kind::Function(prepared) => {
                if let Err(e) = vm::clean_up(&prepared.layout) {
                    warn!("task {}: {e}", req.id);
                }
                Record::remove(&task.bundle);
                unmount_rootfs(&task.bundle);
                netns::remove(&task.bundle);
            }
            Kind::Deferred(deferred) => {
                deferred.holder.end();
                unmount_rootfs(&task.bundle);
                netns::remove(&task.bundle);
            }
            Kind::Sandbox => {}
        }
        let (code, at) = task.exit.clone().unwrap_or_else(|| (0, now()));
        let mut event = TaskDelete::new();
        event.container_id = req.id.clone();
        event.id = req.id;
        event.pid = task.pid;
        event.exit_status = code;
        event.exited_at = MessageField::some(at.clone());
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event));
        Ok(api::DeleteResponse {
            pid: task.pid,
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let tasks = self.tasks();
        let task = tasks.get(&req.id).ok_or_else(|| no_task(&req.id))?;
        let mut response = api::PidsResponse::new();
        if task.pid != 0 {
            let mut process = ProcessInfo::new();
            process.pid = task.pid;
            response.processes.push(process);
        }
        Ok(response)
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let pid = {
            let tasks = self.tasks();
            let task = tasks.get(&req.id).ok_or_else(|| no_task(&req.id))?;
            match &task.kind {
                Kind::Function(_) if task.status == Status::RUNNING => task.pid,
                _ => return Err(status(Code::FAILED_PRECONDITION, "no VM is running")),
            }
        };
        let cgroup = shim::cgroup::get_cgroup(pid).map_err(|e| status(Code::INTERNAL, e))?;
        let metrics =
            shim::cgroup::collect_metrics(&cgroup).map_err(|e| status(Code::INTERNAL, e))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(
                shim::util::convert_to_any(Box::new(metrics))
                    .map_err(|e| status(Code::INTERNAL, e))?,
            ),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.tasks().get(&req.id).map_or(0, |t| t.pid);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.tasks().is_empty() {
            self.inner.exit.signal();
        }
        Ok(api::Empty::new())
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.set_vm_state(&req.id, Status::RUNNING, Status::PAUSED)?;
        let mut event = TaskPaused::new();
        event.container_id = req.id;
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(event));
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.set_vm_state(&req.id, Status::PAUSED, Status::RUNNING)?;
        let mut event = TaskResumed::new();
        event.container_id = req.id;
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(event));
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, _req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // A VM reads no stdin: there is nothing to close.
        Ok(api::Empty::new())
    }
}
