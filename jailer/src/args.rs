//! Step 1: command-line parsing and validation (Firecracker jailer flags).
//! Pure apart from one `stat` of the exec file.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use crate::error::{JailError, Result};

/// Default base directory for chroots, as in Firecracker.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// Longest accepted `--id`.
pub const MAX_ID_LEN: usize = 64;

/// Which cgroup hierarchy to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// One `--cgroup <file>=<value>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    pub file: String,
    pub value: String,
}

impl CgroupSetting {
    /// The controller: the part of the file name before the first dot.
    pub fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or("")
    }
}

/// A resource `--resource-limit` can bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `no-file`: RLIMIT_NOFILE.
    NoFile,
    /// `fsize`: RLIMIT_FSIZE, in bytes.
    Fsize,
}

/// One `--resource-limit <resource>=<value>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimit {
    pub resource: Resource,
    pub value: u64,
}

/// The validated command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailArgs {
    pub id: String,
    /// `--exec-file` as given: its name names the jail and the binary in it.
    pub exec_file: PathBuf,
    /// The file it resolves to, symbolic links followed: what goes in the jail.
    pub exec_source: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
    pub netns: Option<PathBuf>,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    pub cgroups: Vec<CgroupSetting>,
    pub cgroup_version: CgroupVersion,
    pub parent_cgroup: Option<PathBuf>,
    pub resource_limits: Vec<ResourceLimit>,
    /// Everything after `--`, passed to ember.
    pub extra_args: Vec<OsString>,
}

impl JailArgs {
    /// The exec file's last path component (`ember` for `/usr/bin/ember`).
    pub fn exec_file_name(&self) -> &str {
        // Validated in `parse`: the name exists and is UTF-8.
        self.exec_file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
    }

    /// `<exec-name>.pid`, in the jail's root.
    pub fn pid_file_name(&self) -> String {
        format!("{}.pid", self.exec_file_name())
    }

    /// The cgroup path below each hierarchy root: `<parent or exec-name>/<id>`.
    pub fn cgroup_rel(&self) -> PathBuf {
        match &self.parent_cgroup {
            Some(p) => p.join(&self.id),
            None => Path::new(self.exec_file_name()).join(&self.id),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Jail(Box<JailArgs>),
}

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(JailError::Args(msg.into()))
}

/// Checks `--id`: 1..=64 characters, ASCII alphanumerics and `-`.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return err(format!(
            "invalid --id '{id}': must be 1 to {MAX_ID_LEN} characters"
        ));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return err(format!(
            "invalid --id '{id}': only alphanumerics and '-' are allowed"
        ));
    }
    Ok(())
}

/// Checks the exec file: its name contains "ember" or "firecracker", and it
/// resolves to a regular file, whose canonical path it returns.
pub fn validate_exec_file(path: &Path) -> Result<PathBuf> {
    let name = match path.file_name().and_then(|n| n.to_str()) {
        Some(n) => n,
        None => return err(format!("invalid --exec-file '{}'", path.display())),
    };
    if !name.contains("ember") && !name.contains("firecracker") {
        return err(format!(
            "invalid --exec-file '{}': file name must contain \"ember\" or \"firecracker\"",
            path.display()
        ));
    }
    let source = std::fs::canonicalize(path).map_err(JailError::io("args", "exec file", path))?;
    let meta = std::fs::metadata(&source).map_err(JailError::io("args", "exec file", path))?;
    if !meta.is_file() {
        return Err(JailError::Invalid {
            step: "args",
            what: "exec file is not a regular file",
            path: path.to_owned(),
        });
    }
    Ok(source)
}

fn parse_u32(flag: &str, v: &str) -> Result<u32> {
    v.parse()
        .or_else(|_| err(format!("invalid {flag} '{v}': not a number")))
}

/// Parses `<file>=<value>` for `--cgroup`; the file must be
/// `<controller>.<property>` without path separators.
pub fn parse_cgroup(s: &str) -> Result<CgroupSetting> {
    let bad = |why: &str| err(format!("invalid --cgroup '{s}': {why}"));
    let Some((file, value)) = s.split_once('=') else {
        return bad("expected <file>=<value>");
    };
    if value.is_empty() {
        return bad("empty value");
    }
    let Some((ctrl, prop)) = file.split_once('.') else {
        return bad("file must be <controller>.<property>");
    };
    let name_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    };
    if !name_ok(ctrl) || ctrl.contains('.') || !name_ok(prop) || prop.starts_with('.') {
        return bad("file must be <controller>.<property>");
    }
    if value.contains('\n') {
        return bad("value contains a newline");
    }
    Ok(CgroupSetting {
        file: file.to_owned(),
        value: value.to_owned(),
    })
}

/// Parses `<resource>=<value>` for `--resource-limit`.
pub fn parse_resource_limit(s: &str) -> Result<ResourceLimit> {
    let Some((name, value)) = s.split_once('=') else {
        return err(format!(
            "invalid --resource-limit '{s}': expected <resource>=<value>"
        ));
    };
    let resource = match name {
        "no-file" => Resource::NoFile,
        "fsize" => Resource::Fsize,
        _ => {
            return err(format!(
                "invalid --resource-limit '{s}': unknown resource (no-file, fsize)"
            ))
        }
    };
    let value = value
        .parse()
        .or_else(|_| err(format!("invalid --resource-limit '{s}': not a number")))?;
    Ok(ResourceLimit { resource, value })
}

/// `--parent-cgroup` must be a relative path of normal components.
fn parse_parent_cgroup(s: &str) -> Result<PathBuf> {
    let p = PathBuf::from(s);
    if s.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return err(format!(
            "invalid --parent-cgroup '{s}': must be a relative path without '..'"
        ));
    }
    Ok(p)
}

/// Parses and validates the jailer's arguments (without argv[0]).
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command> {
    let mut it = args.into_iter();
    let mut id = None;
    let mut exec_file: Option<PathBuf> = None;
    let mut uid = None;
    let mut gid = None;
    let mut chroot_base = None;
    let mut netns = None;
    let mut daemonize = false;
    let mut new_pid_ns = false;
    let mut allow_root = false;
    let mut cgroups = Vec::new();
    let mut cgroup_version = None;
    let mut parent_cgroup = None;
    let mut resource_limits: Vec<ResourceLimit> = Vec::new();
    let mut extra_args = Vec::new();

    while let Some(arg) = it.next() {
        let Some(arg) = arg.to_str().map(str::to_owned) else {
            return err(format!("argument is not UTF-8: {arg:?}"));
        };
        if arg == "--" {
            extra_args.extend(it.by_ref());
            break;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |inline: Option<String>| -> Result<String> {
            if let Some(v) = inline {
                return Ok(v);
            }
            match it.next() {
                Some(v) => v
                    .into_string()
                    .or_else(|v| err(format!("value for {flag} is not UTF-8: {v:?}"))),
                None => err(format!("missing value for {flag}")),
            }
        };
        fn once<T>(slot: &mut Option<T>, flag: &str, v: T) -> Result<()> {
            if slot.is_some() {
                return err(format!("{flag} given more than once"));
            }
            *slot = Some(v);
            Ok(())
        }
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--id" => once(&mut id, &flag, value(inline)?)?,
            "--exec-file" => once(&mut exec_file, &flag, value(inline)?.into())?,
            "--uid" => {
                let v = value(inline)?;
                once(&mut uid, &flag, parse_u32(&flag, &v)?)?
            }
            "--gid" => {
                let v = value(inline)?;
                once(&mut gid, &flag, parse_u32(&flag, &v)?)?
            }
            "--chroot-base-dir" => {
                let v = value(inline)?;
                if v.is_empty() {
                    return err("empty --chroot-base-dir");
                }
                once(&mut chroot_base, &flag, PathBuf::from(v))?
            }
            "--netns" => {
                let v = value(inline)?;
                if v.is_empty() {
                    return err("empty --netns");
                }
                once(&mut netns, &flag, PathBuf::from(v))?
            }
            "--cgroup" => cgroups.push(parse_cgroup(&value(inline)?)?),
            "--cgroup-version" => {
                let v = match value(inline)?.as_str() {
                    "1" => CgroupVersion::V1,
                    "2" => CgroupVersion::V2,
                    other => return err(format!("invalid --cgroup-version '{other}': 1 or 2")),
                };
                once(&mut cgroup_version, &flag, v)?
            }
            "--parent-cgroup" => {
                let v = parse_parent_cgroup(&value(inline)?)?;
                once(&mut parent_cgroup, &flag, v)?
            }
            "--resource-limit" => {
                let l = parse_resource_limit(&value(inline)?)?;
                if resource_limits.iter().any(|r| r.resource == l.resource) {
                    return err(format!("--resource-limit {arg}: resource given twice"));
                }
                resource_limits.push(l)
            }
            "--daemonize" | "--new-pid-ns" | "--allow-root" if inline.is_some() => {
                return err(format!("{flag} takes no value"))
            }
            "--daemonize" => daemonize = true,
            "--new-pid-ns" => new_pid_ns = true,
            "--allow-root" => allow_root = true,
            _ => return err(format!("unknown argument '{arg}'")),
        }
    }

    let Some(id) = id else {
        return err("missing --id");
    };
    let Some(exec_file) = exec_file else {
        return err("missing --exec-file");
    };
    let Some(uid) = uid else {
        return err("missing --uid");
    };
    let Some(gid) = gid else {
        return err("missing --gid");
    };
    validate_id(&id)?;
    // Root in the jail owns what the jailer hands over and keeps root's
    // file access rules; only a caller who asks for it gets that.
    if (uid == 0 || gid == 0) && !allow_root {
        return err(
            "--uid 0 or --gid 0 runs the jailed process as root: add --allow-root to mean it",
        );
    }
    let exec_source = validate_exec_file(&exec_file)?;
    Ok(Command::Jail(Box::new(JailArgs {
        id,
        exec_file,
        exec_source,
        uid,
        gid,
        chroot_base: chroot_base.unwrap_or_else(|| DEFAULT_CHROOT_BASE.into()),
        netns,
        daemonize,
        new_pid_ns,
        cgroups,
        cgroup_version: cgroup_version.unwrap_or(CgroupVersion::V1),
        parent_cgroup,
        resource_limits,
        extra_args,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    /// An exec file named `name` in a fresh temp dir.
    fn exec_file(name: &str) -> (TempDir, PathBuf) {
        let dir = TempDir::new().expect("a temporary directory");
        let f = dir.as_path().join(name);
        std::fs::write(&f, b"#!/bin/true\n").unwrap();
        (dir, f)
    }

    fn base(exec: &Path) -> Vec<String> {
        vec![
            "--id".into(),
            "vm-1".into(),
            "--exec-file".into(),
            exec.to_str().unwrap().into(),
            "--uid".into(),
            "123".into(),
            "--gid".into(),
            "100".into(),
        ]
    }

    fn parse_strs(v: &[String]) -> Result<Command> {
        parse(v.iter().map(OsString::from))
    }

    fn jail(v: &[String]) -> JailArgs {
        match parse_strs(v).unwrap() {
            Command::Jail(j) => *j,
            Command::Help => panic!("help"),
        }
    }

    fn msg(v: &[String]) -> String {
        parse_strs(v).unwrap_err().to_string()
    }

    #[test]
    fn minimal_uses_defaults() {
        let (_d, exec) = exec_file("ember");
        let j = jail(&base(&exec));
        assert_eq!(j.id, "vm-1");
        assert_eq!((j.uid, j.gid), (123, 100));
        assert_eq!(j.chroot_base, Path::new(DEFAULT_CHROOT_BASE));
        assert_eq!(j.cgroup_version, CgroupVersion::V1);
        assert_eq!(j.exec_file_name(), "ember");
        assert_eq!(j.cgroup_rel(), Path::new("ember/vm-1"));
        assert!(j.cgroups.is_empty() && j.resource_limits.is_empty());
        assert!(!j.daemonize && !j.new_pid_ns && j.netns.is_none());
    }

    #[test]
    fn all_flags_and_extra_args() {
        let (_d, exec) = exec_file("firecracker-v1");
        let mut v = base(&exec);
        for s in [
            "--chroot-base-dir=/tmp/x",
            "--netns",
            "/var/run/netns/a",
            "--daemonize",
            "--new-pid-ns",
            "--cgroup",
            "cpuset.cpus=0-1",
            "--cgroup=memory.limit_in_bytes=1000",
            "--cgroup-version",
            "2",
            "--parent-cgroup",
            "a/b",
            "--resource-limit",
            "no-file=1024",
            "--resource-limit=fsize=250000000",
            "--",
            "--api-sock",
            "/run/x.sock",
            "--unknown-to-jailer",
        ] {
            v.push(s.into());
        }
        let j = jail(&v);
        assert_eq!(j.chroot_base, Path::new("/tmp/x"));
        assert_eq!(j.netns.as_deref(), Some(Path::new("/var/run/netns/a")));
        assert!(j.daemonize && j.new_pid_ns);
        assert_eq!(j.cgroups.len(), 2);
        assert_eq!(j.cgroups[0].controller(), "cpuset");
        assert_eq!(j.cgroups[1].file, "memory.limit_in_bytes");
        assert_eq!(j.cgroups[1].value, "1000");
        assert_eq!(j.cgroup_version, CgroupVersion::V2);
        assert_eq!(j.cgroup_rel(), Path::new("a/b/vm-1"));
        assert_eq!(
            j.resource_limits,
            vec![
                ResourceLimit {
                    resource: Resource::NoFile,
                    value: 1024
                },
                ResourceLimit {
                    resource: Resource::Fsize,
                    value: 250_000_000
                }
            ]
        );
        assert_eq!(
            j.extra_args,
            os(&["--api-sock", "/run/x.sock", "--unknown-to-jailer"])
        );
    }

    #[test]
    fn help() {
        assert_eq!(parse(os(&["--help"])).unwrap(), Command::Help);
        assert_eq!(parse(os(&["-h"])).unwrap(), Command::Help);
    }

    #[test]
    fn ids() {
        assert!(validate_id("a").is_ok());
        assert!(validate_id("551e7604-e35c-42b3-b825-416853441234").is_ok());
        assert!(validate_id(&"a".repeat(64)).is_ok());
        assert!(validate_id(&"a".repeat(65)).is_err());
        for bad in ["", "a_b", "a/b", "..", "a b", "é"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exec_file_checks() {
        let (_d1, bad_name) = exec_file("vmm");
        let mut v = base(&bad_name);
        assert!(msg(&v).contains("must contain"), "{}", msg(&v));
        let (_d2, good) = exec_file("ember");
        v = base(&good.with_file_name("ember-missing"));
        assert!(msg(&v).starts_with("args: exec file '"), "{}", msg(&v));
        let dir = good.with_file_name("ember-dir");
        std::fs::create_dir_all(&dir).unwrap();
        v = base(&dir);
        assert!(msg(&v).contains("not a regular file"), "{}", msg(&v));
    }

    #[test]
    fn rejects_bad_command_lines() {
        let (_d, exec) = exec_file("ember");
        let b = base(&exec);
        let with = |extra: &[&str]| {
            let mut v = b.clone();
            v.extend(extra.iter().map(|s| s.to_string()));
            msg(&v)
        };
        assert!(with(&["--bogus"]).contains("unknown argument '--bogus'"));
        assert!(with(&["stray"]).contains("unknown argument"));
        assert!(with(&["--id", "x"]).contains("more than once"));
        assert!(with(&["--cgroup-version", "3"]).contains("--cgroup-version"));
        assert!(with(&["--parent-cgroup", "/abs"]).contains("--parent-cgroup"));
        assert!(with(&["--parent-cgroup", "a/../b"]).contains("--parent-cgroup"));
        assert!(with(&["--daemonize=1"]).contains("takes no value"));
        assert!(
            with(&["--resource-limit", "fsize=1", "--resource-limit", "fsize=2"]).contains("twice")
        );
        assert!(with(&["--netns"]).contains("missing value for --netns"));
        for (flag, val) in [("--uid", "x"), ("--gid", "-1"), ("--uid", "4294967296")] {
            let mut v = b.clone();
            let i = v.iter().position(|s| s == flag).unwrap();
            v[i + 1] = val.into();
            assert!(msg(&v).contains("not a number"));
        }
        for missing in ["--id", "--exec-file", "--uid", "--gid"] {
            let mut v = b.clone();
            let i = v.iter().position(|s| s == missing).unwrap();
            v.drain(i..i + 2);
            assert_eq!(msg(&v), format!("args: missing {missing}"));
        }
    }

    #[test]
    fn cgroup_syntax() {
        let c = parse_cgroup("cpu.shares=512").unwrap();
        assert_eq!((c.controller(), c.value.as_str()), ("cpu", "512"));
        let c = parse_cgroup("hugetlb.2MB.max=0").unwrap();
        assert_eq!(
            (c.controller(), c.file.as_str()),
            ("hugetlb", "hugetlb.2MB.max")
        );
        assert_eq!(parse_cgroup("cpuset.cpus=0-3,5").unwrap().value, "0-3,5");
        for bad in [
            "cpu.shares",
            "cpu.shares=",
            "=1",
            "cpu=1",
            ".shares=1",
            "cpu.=1",
            "cpu/../x.y=1",
            "../cpu.shares=1",
            "cpu.shares=1\n2",
        ] {
            assert!(parse_cgroup(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resource_limit_syntax() {
        assert_eq!(
            parse_resource_limit("no-file=1024").unwrap(),
            ResourceLimit {
                resource: Resource::NoFile,
                value: 1024
            }
        );
        assert_eq!(
            parse_resource_limit("fsize=0").unwrap().resource,
            Resource::Fsize
        );
        for bad in ["no-file", "nofile=1", "fsize=-1", "fsize=x", "fsize=", "=1"] {
            assert!(parse_resource_limit(bad).is_err(), "{bad:?}");
        }
    }
}
