//! Command-line flags, with Firecracker's names for what ember has.

use std::ffi::OsString;

use log::LevelFilter;

use crate::api::routes::DEFAULT_MAX_BODY_BYTES;
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
  --mmds-size-limit N  largest MMDS data store, in bytes of JSON (default: the API's payload limit)
  --http-api-max-payload-size N  largest API request body, in bytes (default 51200)
  --module PREFIX      log only records of modules whose path starts with PREFIX (e.g. ember::devices)
  --start-time-us N    the jailer's start, CLOCK_MONOTONIC microseconds: ember logs (Info) the time to a ready API
  --start-time-cpu-us N, --parent-cpu-time-us N
                       the jailer's CPU times: accepted from Firecracker's jailer, not used
  --enable-pci         put the virtio devices on PCI (virtio-pci with MSI-X) instead of virtio-mmio
  --snapshot-version   print the snapshot format version ember writes and exit
  --describe-snapshot PATH  print the format version of the snapshot state file PATH and exit
  --metrics-path PATH  flush metrics (one JSON object per line) to this file or named pipe
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
    /// `--enable-pci`: virtio devices on PCI.
    pub pci: bool,
    pub seccomp: Seccomp,
    /// Test hook: the kind of thread that breaks its seccomp filter on purpose.
    pub seccomp_selftest: Option<Selftest>,
    /// A JSON file that starts the MMDS data store.
    pub metadata: Option<String>,
    pub mmds_size_limit: usize,
    /// Largest API request body, in bytes.
    pub http_api_max_payload_size: usize,
    /// Only records of modules whose path starts with this are logged.
    pub module: Option<String>,
    /// When the jailer started, in CLOCK_MONOTONIC microseconds: ember logs
    /// the time from then to a ready API, as Firecracker records it.
    pub start_time_us: Option<u64>,
    /// The file or named pipe metrics are flushed to, as `PUT /metrics` sets it.
    pub metrics_path: Option<String>,
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
    Run(Box<Args>),
    Help,
    Version,
    /// `--snapshot-version`: the format version ember writes.
    SnapshotVersion,
    /// `--describe-snapshot PATH`: the format version of the state file at PATH.
    DescribeSnapshot(String),
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
    /// A flag that takes a number, given something else.
    #[error("invalid {flag} '{value}': give a whole number")]
    Number { flag: &'static str, value: String },
    /// A --seccomp-selftest the test hook does not know.
    #[error("invalid --seccomp-selftest '{0}': use vmm, api or vcpu, optionally followed by :acct, :execve, :fork, :mprotect-exec or :signal-other")]
    SelftestKind(String),
}

const VALUE_FLAGS: [&str; 16] = [
    "--api-sock",
    "--config-file",
    "--id",
    "--level",
    "--log-path",
    "--seccomp-filter",
    "--seccomp-selftest",
    "--mmds-size-limit",
    "--metadata",
    "--http-api-max-payload-size",
    "--module",
    "--start-time-us",
    "--start-time-cpu-us",
    "--parent-cpu-time-us",
    "--describe-snapshot",
    "--metrics-path",
];
const SWITCHES: [&str; 8] = [
    "--no-api",
    "--boot-timer",
    "--show-level",
    "--show-log-origin",
    "--no-seccomp",
    "--enable-pci",
    "--snapshot-version",
    "--help",
];

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, Error> {
    match Flags::read(args)? {
        Ok(flags) => match flags.value("--describe-snapshot") {
            Some(path) => Ok(Command::DescribeSnapshot(path)),
            None => flags.into_args().map(|args| Command::Run(Box::new(args))),
        },
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
    /// The flags, or the command `--help`, `--version` or `--snapshot-version`
    /// asked for instead.
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
                match switch {
                    "--help" => return Ok(Err(Command::Help)),
                    "--snapshot-version" => return Ok(Err(Command::SnapshotVersion)),
                    _ => {}
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

    /// The value of `flag` as a number, if given.
    fn number<T: std::str::FromStr>(&self, flag: &'static str) -> Result<Option<T>, Error> {
        self.value(flag)
            .map(|value| value.parse().map_err(|_| Error::Number { flag, value }))
            .transpose()
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
        let http_api_max_payload_size = self
            .number("--http-api-max-payload-size")?
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        // As in Firecracker, the data store holds at most what one request can carry.
        let mmds_size_limit = self
            .number("--mmds-size-limit")?
            .unwrap_or(http_api_max_payload_size);
        // Firecracker's jailer passes its CPU times too; ember cannot read its
        // own without a syscall its seccomp filters leave out, so it only checks them.
        self.number::<u64>("--start-time-cpu-us")?;
        self.number::<u64>("--parent-cpu-time-us")?;
        Ok(Args {
            api_sock,
            config_file,
            id,
            level,
            log_path: self.value("--log-path"),
            show_level: self.has("--show-level"),
            show_log_origin: self.has("--show-log-origin"),
            boot_timer: self.has("--boot-timer"),
            pci: self.has("--enable-pci"),
            seccomp,
            seccomp_selftest,
            metadata: self.value("--metadata"),
            mmds_size_limit,
            http_api_max_payload_size,
            module: self.value("--module"),
            start_time_us: self.number("--start-time-us")?,
            metrics_path: self.value("--metrics-path"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::{Probe, ThreadKind};

    fn run(args: &[&str]) -> Result<Args, Error> {
        match parse(args.iter().map(OsString::from))? {
            Command::Run(a) => Ok(*a),
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
        assert_eq!(a.http_api_max_payload_size, 51_200);
        assert_eq!(a.mmds_size_limit, 51_200);
        assert_eq!((a.module, a.start_time_us), (None, None));
    }

    #[test]
    fn every_flag_firecrackers_jailer_passes_is_taken() {
        let a = run(&[
            "--id",
            "fn-1",
            "--start-time-us",
            "123456789",
            "--start-time-cpu-us=42",
            "--parent-cpu-time-us",
            "7",
            "--api-sock",
            "/run/api.sock",
            "--metrics-path",
            "/run/metrics.fifo",
        ])
        .unwrap();
        assert_eq!(a.start_time_us, Some(123_456_789));
        assert_eq!(a.metrics_path.as_deref(), Some("/run/metrics.fifo"));
        for flag in [
            "--start-time-us",
            "--start-time-cpu-us",
            "--parent-cpu-time-us",
            "--http-api-max-payload-size",
            "--mmds-size-limit",
        ] {
            assert_eq!(
                run(&[flag, "soon"]),
                Err(Error::Number {
                    flag,
                    value: "soon".into()
                })
            );
            let message = run(&[flag, "-1"]).unwrap_err().to_string();
            assert!(message.contains(flag), "{message}");
        }
    }

    #[test]
    fn the_payload_limit_also_caps_the_metadata_unless_that_has_its_own() {
        let a = run(&["--http-api-max-payload-size", "1000"]).unwrap();
        assert_eq!(
            (a.http_api_max_payload_size, a.mmds_size_limit),
            (1000, 1000)
        );
        let a = run(&[
            "--http-api-max-payload-size",
            "1000",
            "--mmds-size-limit",
            "300",
        ])
        .unwrap();
        assert_eq!(
            (a.http_api_max_payload_size, a.mmds_size_limit),
            (1000, 300)
        );
        let a = run(&["--module", "ember::devices"]).unwrap();
        assert_eq!(a.module.as_deref(), Some("ember::devices"));
    }

    #[test]
    fn snapshot_commands_and_pci() {
        assert_eq!(
            parse(["--snapshot-version"].map(OsString::from)),
            Ok(Command::SnapshotVersion)
        );
        assert_eq!(
            parse(["--describe-snapshot", "fn.snap"].map(OsString::from)),
            Ok(Command::DescribeSnapshot("fn.snap".into()))
        );
        assert_eq!(
            run(&["--describe-snapshot"]),
            Err(Error::MissingValue("--describe-snapshot"))
        );
        assert!(run(&["--enable-pci"]).unwrap().pci);
        assert!(!run(&[]).unwrap().pci);
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
