//! Command-line flags, with Firecracker's names for what ember has.

use std::ffi::OsString;

use log::LevelFilter;

use crate::config::is_valid_id;
use crate::logger::parse_level;
use crate::seccomp::Selftest;

pub const DEFAULT_API_SOCK: &str = "/run/ember.socket";
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";

pub const USAGE: &str = "\
ember: a microVM monitor for serverless functions, driven like Firecracker

usage: ember [options]

  --api-sock PATH      Unix socket for the API (default /run/ember.socket)
  --config-file PATH   boot the microVM described by this JSON file
  --no-api             serve no API (requires --config-file)
  --id ID              instance id, 1 to 64 of [a-zA-Z0-9_-] (default anonymous-instance)
  --level LEVEL        log level: Error, Warning, Info, Debug, Trace or Off (default Warning)
  --log-path PATH      write the log to this file or named pipe (default stderr)
  --show-level         put the level in each log line
  --show-log-origin    put the source file and line in each log line
  --boot-timer         log the time from InstanceStart to the guest's boot-complete signal
  --no-seccomp         run without seccomp filters
  --seccomp-filter PATH  use these filters (JSON, as resources/seccomp/x86_64.json) instead of the built-in ones
  --metadata PATH      start the metadata service's (MMDS) data store with this JSON file
  --mmds-size-limit N  largest MMDS data store, in bytes of JSON (default 51200)
  --version            print the version and exit
  --help               print this help and exit";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub api_sock: Option<String>,
    pub config_file: Option<String>,
    pub id: String,
    pub level: LevelFilter,
    pub log_path: Option<String>,
    pub show_level: bool,
    pub show_log_origin: bool,
    pub boot_timer: bool,
    pub seccomp: Seccomp,
    /// Test hook: the kind of thread that breaks its seccomp filter on purpose.
    pub seccomp_selftest: Option<Selftest>,
    /// A JSON file that starts the MMDS data store.
    pub metadata: Option<String>,
    pub mmds_size_limit: usize,
}

/// Which seccomp filters to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seccomp {
    Builtin,
    Custom(String),
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Args),
    Help,
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A flag neither ember nor Firecracker has.
    #[error("unknown argument '{0}' (see --help)")]
    Unknown(String),
    /// A flag that takes a value, given none (or an empty one).
    #[error("argument '{0}' needs a value")]
    MissingValue(&'static str),
    /// A flag given twice: which one should win is not obvious, so neither does.
    #[error("argument '{0}' was given twice")]
    Repeated(&'static str),
    /// Paths and ids are UTF-8 in the API too.
    #[error("argument '{0}' is not valid UTF-8")]
    NotUtf8(String),
    /// An instance id Firecracker would refuse.
    #[error("invalid --id '{0}': use 1 to 64 characters from [a-zA-Z0-9_-]")]
    Id(String),
    /// A --level that is not a log level.
    #[error("{0}")]
    Level(String),
    /// Without an API and a config file nothing could start a VM.
    #[error("--no-api requires --config-file")]
    NoApiWithoutConfig,
    /// Two contradicting filter choices.
    #[error("--no-seccomp and --seccomp-filter exclude each other")]
    SeccompConflict,
    /// A --mmds-size-limit that is not a byte count.
    #[error("invalid --mmds-size-limit '{0}': give a number of bytes")]
    MmdsSizeLimit(String),
    /// A --seccomp-selftest the test hook does not know.
    #[error("invalid --seccomp-selftest '{0}': use vmm, api or vcpu, optionally followed by :acct, :execve, :fork, :mprotect-exec or :signal-other")]
    SelftestKind(String),
}

const VALUE_FLAGS: [&str; 9] = [
    "--api-sock",
    "--config-file",
    "--id",
    "--level",
    "--log-path",
    "--seccomp-filter",
    "--seccomp-selftest",
    "--mmds-size-limit",
    "--metadata",
];
const SWITCHES: [&str; 6] = [
    "--no-api",
    "--boot-timer",
    "--show-level",
    "--show-log-origin",
    "--no-seccomp",
    "--help",
];

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, Error> {
    match Flags::read(args)? {
        Ok(flags) => flags.into_args().map(Command::Run),
        Err(command) => Ok(command),
    }
}

fn utf8(arg: OsString) -> Result<String, Error> {
    arg.into_string()
        .map_err(|a| Error::NotUtf8(a.to_string_lossy().into_owned()))
}

/// The flags as given, each checked against the known ones.
#[derive(Default)]
struct Flags {
    values: Vec<(&'static str, String)>,
    switches: Vec<&'static str>,
}

impl Flags {
    /// The flags, or the command `--help` or `--version` asked for instead.
    fn read(args: impl IntoIterator<Item = OsString>) -> Result<Result<Flags, Command>, Error> {
        let mut flags = Flags::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let arg = utf8(arg)?;
            if arg == "--version" {
                return Ok(Err(Command::Version));
            }
            // Both `--flag value` and `--flag=value`.
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            if let Some(&flag) = VALUE_FLAGS.iter().find(|f| **f == name) {
                let value = match inline {
                    Some(v) => v,
                    None => utf8(args.next().ok_or(Error::MissingValue(flag))?)?,
                };
                flags.add_value(flag, value)?;
            } else if let Some(&switch) = SWITCHES.iter().find(|s| **s == arg) {
                if switch == "--help" {
                    return Ok(Err(Command::Help));
                }
                flags.switches.push(switch);
            } else {
                return Err(Error::Unknown(arg));
            }
        }
        Ok(Ok(flags))
    }

    fn add_value(&mut self, flag: &'static str, value: String) -> Result<(), Error> {
        if value.is_empty() {
            return Err(Error::MissingValue(flag));
        }
        if self.values.iter().any(|(f, _)| *f == flag) {
            return Err(Error::Repeated(flag));
        }
        self.values.push((flag, value));
        Ok(())
    }

    fn value(&self, flag: &str) -> Option<String> {
        self.values
            .iter()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.clone())
    }

    fn has(&self, switch: &str) -> bool {
        self.switches.contains(&switch)
    }

    fn into_args(self) -> Result<Args, Error> {
        let id = self
            .value("--id")
            .unwrap_or_else(|| DEFAULT_INSTANCE_ID.to_string());
        if !is_valid_id(&id) {
            return Err(Error::Id(id));
        }
        let level = match self.value("--level") {
            Some(l) => parse_level(&l).map_err(|e| Error::Level(e.to_string()))?,
            None => LevelFilter::Warn,
        };
        let config_file = self.value("--config-file");
        let api_sock = if self.has("--no-api") {
            if config_file.is_none() {
                return Err(Error::NoApiWithoutConfig);
            }
            None
        } else {
            Some(
                self.value("--api-sock")
                    .unwrap_or_else(|| DEFAULT_API_SOCK.to_string()),
            )
        };
        let seccomp = match (self.has("--no-seccomp"), self.value("--seccomp-filter")) {
            (true, Some(_)) => return Err(Error::SeccompConflict),
            (true, None) => Seccomp::Disabled,
            (false, Some(path)) => Seccomp::Custom(path),
            (false, None) => Seccomp::Builtin,
        };
        let seccomp_selftest = self
            .value("--seccomp-selftest")
            .map(|text| Selftest::parse(&text).ok_or(Error::SelftestKind(text)))
            .transpose()?;
        let mmds_size_limit = match self.value("--mmds-size-limit") {
            Some(text) => text.parse().map_err(|_| Error::MmdsSizeLimit(text))?,
            None => crate::mmds::DEFAULT_SIZE_LIMIT,
        };
        Ok(Args {
            api_sock,
            config_file,
            id,
            level,
            log_path: self.value("--log-path"),
            show_level: self.has("--show-level"),
            show_log_origin: self.has("--show-log-origin"),
            boot_timer: self.has("--boot-timer"),
            seccomp,
            seccomp_selftest,
            metadata: self.value("--metadata"),
            mmds_size_limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::{Probe, ThreadKind};

    fn run(args: &[&str]) -> Result<Args, Error> {
        match parse(args.iter().map(OsString::from))? {
            Command::Run(a) => Ok(a),
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_firecrackers_behaviour() {
        let a = run(&[]).unwrap();
        assert_eq!(a.api_sock.as_deref(), Some(DEFAULT_API_SOCK));
        assert_eq!(a.id, DEFAULT_INSTANCE_ID);
        assert_eq!(a.level, LevelFilter::Warn);
        assert!(!a.boot_timer);
    }

    #[test]
    fn flags_take_values_in_both_spellings() {
        let a = run(&[
            "--api-sock",
            "/tmp/a.sock",
            "--id=fn-1",
            "--level",
            "debug",
            "--boot-timer",
        ])
        .unwrap();
        assert_eq!(a.api_sock.as_deref(), Some("/tmp/a.sock"));
        assert_eq!(a.id, "fn-1");
        assert_eq!(a.level, LevelFilter::Debug);
        assert!(a.boot_timer);
        let a = run(&["--no-api", "--config-file", "vm.json"]).unwrap();
        assert_eq!(
            (a.api_sock, a.config_file.as_deref()),
            (None, Some("vm.json"))
        );
    }

    #[test]
    fn bad_command_lines_are_errors() {
        assert_eq!(
            run(&["--frobnicate"]),
            Err(Error::Unknown("--frobnicate".into()))
        );
        assert_eq!(run(&["--api-sock"]), Err(Error::MissingValue("--api-sock")));
        assert_eq!(run(&["--id", "a b"]), Err(Error::Id("a b".into())));
        assert!(matches!(run(&["--level", "loud"]), Err(Error::Level(_))));
        assert_eq!(run(&["--no-api"]), Err(Error::NoApiWithoutConfig));
        assert_eq!(
            run(&["--id", "a", "--id", "b"]),
            Err(Error::Repeated("--id"))
        );
        assert_eq!(
            run(&["--no-seccomp", "--seccomp-filter", "f.json"]),
            Err(Error::SeccompConflict)
        );
        assert_eq!(
            run(&["--seccomp-selftest", "gpu"]),
            Err(Error::SelftestKind("gpu".into()))
        );
        assert_eq!(
            run(&["--seccomp-selftest", "vmm:open"]),
            Err(Error::SelftestKind("vmm:open".into()))
        );
    }

    #[test]
    fn seccomp_is_on_unless_turned_off_or_replaced() {
        assert_eq!(run(&[]).unwrap().seccomp, Seccomp::Builtin);
        assert_eq!(run(&["--no-seccomp"]).unwrap().seccomp, Seccomp::Disabled);
        assert_eq!(
            run(&["--seccomp-filter", "f.json"]).unwrap().seccomp,
            Seccomp::Custom("f.json".into())
        );
        let selftest = |text| run(&["--seccomp-selftest", text]).unwrap().seccomp_selftest;
        assert_eq!(
            selftest("vcpu"),
            Some(Selftest {
                kind: ThreadKind::Vcpu,
                probe: Probe::Acct
            })
        );
        assert_eq!(
            selftest("vmm:mprotect-exec"),
            Some(Selftest {
                kind: ThreadKind::Vmm,
                probe: Probe::MprotectExec
            })
        );
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(parse(["--help"].map(OsString::from)), Ok(Command::Help));
        assert_eq!(
            parse(["--bogus", "--version"].map(OsString::from)).ok(),
            None
        );
        assert_eq!(
            parse(["--version"].map(OsString::from)),
            Ok(Command::Version)
        );
    }
}
