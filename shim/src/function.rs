//! What a task's OCI runtime spec (`config.json` in its bundle) asks of ember:
//! the function image convention.
//!
//! A function image's root filesystem holds a unikernel, and its image config
//! says how to run it the way any image does, so `ctr run`, nerdctl and the CRI
//! carry it into the spec unchanged:
//! - the entrypoint's first word is the unikernel's path in the image, the
//!   rest of the command line goes to the guest's kernel command line;
//! - `EMBER_VCPUS`, `EMBER_MEMORY_MIB`, `EMBER_PORT` and `EMBER_HTTP_PORT` in
//!   the environment set the vCPUs, the guest memory, the function's vsock port
//!   and, on a pod network, the TCP port it answers HTTP on;
//! - the rest of the environment reaches the function through the MMDS, at
//!   `/ember/env/<NAME>`, when the VM is on a pod network (the MMDS is reached
//!   over the VM's network interface);
//! - `EMBER_SNAPSHOT=off` boots every task rather than restoring the
//!   function's snapshot (see the shim's `cache.rs`);
//! - the annotations `io.ember.vcpus`, `io.ember.memory-mib`, `io.ember.port`,
//!   `io.ember.http-port` and `io.ember.snapshot` override them per container (Kubernetes passes pod
//!   annotations through when the runtime's `pod_annotations` allows `io.ember.*`).
//!
//! Kubernetes also asks every runtime for a pod sandbox (the pause container);
//! for ember that task is a placeholder with no VM ([`TaskKind::Sandbox`]).

use std::collections::BTreeMap;

use serde::Deserialize;

/// Guest memory when the image does not say.
pub const DEFAULT_MEMORY_MIB: u32 = 64;
/// The function runtime's vsock port when the image does not say.
pub const DEFAULT_PORT: u32 = 1024;
/// The TCP port a function on a pod network answers HTTP on when the image does
/// not say.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Largest guest a function image may ask for.
const MAX_VCPUS: u32 = 32;
const MAX_MEMORY_MIB: u32 = 256 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("config.json is not an OCI runtime spec: {0}")]
    Spec(String),
    #[error("the container has no command: a function image's entrypoint names its unikernel")]
    NoKernel,
    #[error("{name}='{value}' is not a whole number between {min} and {max}")]
    Setting {
        name: String,
        value: String,
        min: u32,
        max: u32,
    },
    #[error("ember tasks have no terminal: run them without -t")]
    Terminal,
    #[error("{name}='{value}' is neither on nor off")]
    Switch { name: String, value: String },
}

/// The parts of the OCI runtime spec the shim reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    process: Option<Process>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    linux: Option<Linux>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Process {
    #[serde(default)]
    terminal: bool,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Linux {
    #[serde(default)]
    cgroups_path: Option<String>,
    #[serde(default)]
    namespaces: Vec<Namespace>,
    #[serde(default)]
    resources: Option<Resources>,
}

#[derive(Debug, Default, Deserialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Resources {
    #[serde(default)]
    memory: Option<MemoryLimit>,
}

#[derive(Debug, Default, Deserialize)]
struct MemoryLimit {
    #[serde(default)]
    limit: Option<i64>,
}

/// What a task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskKind {
    /// A function VM.
    Function(Function),
    /// A Kubernetes pod sandbox: it holds the pod's namespaces and runs nothing.
    Sandbox,
}

/// Where a function VM's network namespace comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// The spec names none: the host's (the shim's).
    Host,
    /// The spec names one by path (a Kubernetes pod's).
    Join(String),
    /// The spec asks for a new one: the shim makes it (see the shim's `netns.rs`).
    New,
}

/// A function VM as the spec describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The unikernel's path inside the image's root filesystem.
    pub kernel: String,
    /// Words for the guest's kernel command line, after the console's.
    pub args: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub port: u32,
    /// The TCP port the function answers HTTP on, on a pod network.
    pub http_port: u16,
    /// Whether tasks restore the function's snapshot (and the first takes it).
    pub snapshot: bool,
    /// The environment besides ember's own settings.
    pub env: Vec<(String, String)>,
    /// The network namespace the VM runs in.
    pub network: Network,
    /// The cgroup the runtime was asked to use (`linux.cgroupsPath`).
    pub cgroups_path: Option<String>,
    /// The container's memory limit in bytes, if any.
    pub memory_limit: Option<u64>,
}

/// Reads a task's `config.json`.
pub fn parse(config: &[u8]) -> Result<TaskKind, Error> {
    let spec: Spec = serde_json::from_slice(config).map_err(|e| Error::Spec(e.to_string()))?;
    let sandbox = [
        "io.kubernetes.cri.container-type",
        "io.kubernetes.cri-o.ContainerType",
    ]
    .iter()
    .any(|key| spec.annotations.get(*key).map(String::as_str) == Some("sandbox"));
    if sandbox {
        return Ok(TaskKind::Sandbox);
    }
    let process = spec.process.unwrap_or_default();
    if process.terminal {
        return Err(Error::Terminal);
    }
    let mut args = process.args.into_iter();
    let kernel = args
        .next()
        .filter(|k| !k.is_empty())
        .ok_or(Error::NoKernel)?;
    let mut own = BTreeMap::new();
    let mut env = Vec::new();
    for entry in process.env {
        let (name, value) = entry.split_once('=').unwrap_or((&entry, ""));
        if name.starts_with("EMBER_") {
            own.insert(name.to_owned(), value.to_owned());
        } else {
            env.push((name.to_owned(), value.to_owned()));
        }
    }
    let setting = |env_name: &str, annotation: &str, default: u32, max: u32| {
        let given = spec
            .annotations
            .get(annotation)
            .map(|v| (annotation, v))
            .or_else(|| own.get(env_name).map(|v| (env_name, v)));
        match given {
            None => Ok(default),
            Some((name, value)) => value
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| Error::Setting {
                    name: name.to_owned(),
                    value: value.clone(),
                    min: 1,
                    max,
                }),
        }
    };
    let snapshot = match spec
        .annotations
        .get("io.ember.snapshot")
        .map(|v| ("io.ember.snapshot", v))
        .or_else(|| own.get("EMBER_SNAPSHOT").map(|v| ("EMBER_SNAPSHOT", v)))
    {
        None => true,
        Some((_, v)) if ["on", "true", "1"].contains(&v.as_str()) => true,
        Some((_, v)) if ["off", "false", "0"].contains(&v.as_str()) => false,
        Some((name, value)) => {
            return Err(Error::Switch {
                name: name.to_owned(),
                value: value.clone(),
            })
        }
    };
    let linux = spec.linux.unwrap_or_default();
    Ok(TaskKind::Function(Function {
        snapshot,
        vcpus: setting("EMBER_VCPUS", "io.ember.vcpus", 1, MAX_VCPUS)?,
        memory_mib: setting(
            "EMBER_MEMORY_MIB",
            "io.ember.memory-mib",
            DEFAULT_MEMORY_MIB,
            MAX_MEMORY_MIB,
        )?,
        port: setting("EMBER_PORT", "io.ember.port", DEFAULT_PORT, u32::MAX)?,
        http_port: setting(
            "EMBER_HTTP_PORT",
            "io.ember.http-port",
            DEFAULT_HTTP_PORT.into(),
            u16::MAX.into(),
        )
        .map(|port| u16::try_from(port).unwrap_or(DEFAULT_HTTP_PORT))?,
        kernel,
        args: args.collect(),
        env,
        network: match linux.namespaces.iter().find(|ns| ns.kind == "network") {
            None => Network::Host,
            Some(Namespace {
                path: Some(path), ..
            }) if !path.is_empty() => Network::Join(path.clone()),
            Some(_) => Network::New,
        },
        cgroups_path: linux.cgroups_path.filter(|p| !p.is_empty()),
        memory_limit: linux
            .resources
            .and_then(|r| r.memory)
            .and_then(|m| m.limit)
            .and_then(|l| u64::try_from(l).ok())
            .filter(|&l| l > 0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(spec: serde_json::Value) -> Result<Function, Error> {
        match parse(spec.to_string().as_bytes())? {
            TaskKind::Function(f) => Ok(f),
            TaskKind::Sandbox => panic!("not a sandbox"),
        }
    }

    #[test]
    fn reads_the_image_convention() {
        let f = function(serde_json::json!({
            "process": {
                "args": ["/function", "greeting=hi"],
                "env": ["PATH=/bin", "EMBER_VCPUS=2", "EMBER_MEMORY_MIB=128", "EMBER_PORT=2000", "EMBER_HTTP_PORT=9000", "NAME=x=y"]
            },
            "linux": {
                "cgroupsPath": "/default/echo",
                "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/pod"}],
                "resources": {"memory": {"limit": 268435456}}
            }
        }))
        .unwrap();
        assert_eq!(f.kernel, "/function");
        assert_eq!(f.args, ["greeting=hi"]);
        assert_eq!((f.vcpus, f.memory_mib, f.port), (2, 128, 2000));
        assert_eq!(f.http_port, 9000);
        assert_eq!(
            f.env,
            [
                ("PATH".into(), "/bin".into()),
                ("NAME".into(), "x=y".into())
            ]
        );
        assert_eq!(f.network, Network::Join("/var/run/netns/pod".into()));
        assert_eq!(f.cgroups_path.as_deref(), Some("/default/echo"));
        assert_eq!(f.memory_limit, Some(256 << 20));
    }

    #[test]
    fn annotations_override_the_image_and_defaults_fill_the_rest() {
        let f = function(serde_json::json!({
            "process": {"args": ["/fn"], "env": ["EMBER_VCPUS=2"]},
            "annotations": {"io.ember.vcpus": "4"}
        }))
        .unwrap();
        assert_eq!(
            (f.vcpus, f.memory_mib, f.port, f.snapshot),
            (4, DEFAULT_MEMORY_MIB, DEFAULT_PORT, true)
        );
        let off = |env: &str, annotation: Option<&str>| {
            let annotations = annotation.map_or(
                serde_json::json!({}),
                |a| serde_json::json!({"io.ember.snapshot": a}),
            );
            function(serde_json::json!({
                "process": {"args": ["/fn"], "env": [env]}, "annotations": annotations
            }))
            .map(|f| !f.snapshot)
        };
        assert_eq!(off("EMBER_SNAPSHOT=off", None), Ok(true));
        assert_eq!(off("EMBER_SNAPSHOT=off", Some("on")), Ok(false));
        assert!(matches!(
            off("EMBER_SNAPSHOT=maybe", None),
            Err(Error::Switch { .. })
        ));
        assert_eq!(
            (f.network, f.cgroups_path, f.memory_limit),
            (Network::Host, None, None)
        );
        let new = function(serde_json::json!({
            "process": {"args": ["/fn"]},
            "linux": {"namespaces": [{"type": "network"}]}
        }))
        .unwrap();
        assert_eq!(
            new.network,
            Network::New,
            "a new namespace, as runc would make"
        );
    }

    #[test]
    fn bad_settings_name_what_was_wrong() {
        for (env, name) in [
            ("EMBER_VCPUS=0", "EMBER_VCPUS"),
            ("EMBER_VCPUS=many", "EMBER_VCPUS"),
            ("EMBER_MEMORY_MIB=-1", "EMBER_MEMORY_MIB"),
        ] {
            let err = function(serde_json::json!({"process": {"args": ["/fn"], "env": [env]}}))
                .unwrap_err();
            assert!(
                matches!(&err, Error::Setting { name: n, .. } if n == name),
                "{err}"
            );
        }
        let no_command = function(serde_json::json!({"process": {"args": []}}));
        assert_eq!(no_command, Err(Error::NoKernel));
        let terminal =
            function(serde_json::json!({"process": {"args": ["/fn"], "terminal": true}}));
        assert_eq!(terminal, Err(Error::Terminal));
        assert!(matches!(parse(b"not json"), Err(Error::Spec(_))));
    }

    #[test]
    fn a_pod_sandbox_runs_no_vm() {
        let spec = serde_json::json!({
            "process": {"args": ["/pause"]},
            "annotations": {"io.kubernetes.cri.container-type": "sandbox"}
        });
        assert_eq!(parse(spec.to_string().as_bytes()), Ok(TaskKind::Sandbox));
    }
}
