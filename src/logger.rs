//! ember's log: Firecracker-style lines on stderr or in `--log-path`
//! (a file or a named pipe), behind the `log` crate's macros.
//!
//! A guest can make a device complain on every register write, so each call
//! site (ours and our crates', such as virtio-queue's) gets at most
//! `SITE_BURST` lines per `SITE_WINDOW`; the first line of the next window
//! says how many were left out. Writes never block: a full pipe drops the line.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

use crate::config::LoggerConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A level name neither ember nor Firecracker knows.
    #[error("invalid log level '{0}': use Error, Warning, Info, Debug, Trace or Off")]
    Level(String),
    /// A log file or named pipe that cannot be opened for appending.
    #[error("cannot open log file '{path}': {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

/// Lines one call site may log per window (Firecracker's rate: 10 per 5 s).
const SITE_BURST: u32 = 10;
const SITE_WINDOW: Duration = Duration::from_secs(5);

struct Settings {
    sink: Box<dyn Write + Send>,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

/// A call site's lines in its current window.
struct SiteCount {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Per-call-site rate limiting. Call sites are static code locations, so the
/// map stays as small as the program.
#[derive(Default)]
struct RateLimiter {
    sites: HashMap<(&'static str, u32), SiteCount>,
}

impl RateLimiter {
    /// Whether a line from `site` goes out now, and how many from it were
    /// suppressed since the last one that did.
    fn admit(&mut self, site: (&'static str, u32), now: Instant) -> Option<u64> {
        let count = self.sites.entry(site).or_insert(SiteCount {
            window_start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(count.window_start) >= SITE_WINDOW {
            count.window_start = now;
            count.logged = 0;
        }
        if count.logged >= SITE_BURST {
            count.suppressed += 1;
            return None;
        }
        count.logged += 1;
        Some(std::mem::take(&mut count.suppressed))
    }
}

struct Logger {
    instance_id: String,
    settings: Mutex<Settings>,
    limiter: Mutex<RateLimiter>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Parses Firecracker's level names, case-insensitively.
pub fn parse_level(name: &str) -> Result<LevelFilter, Error> {
    match name.to_ascii_lowercase().as_str() {
        "error" => Ok(LevelFilter::Error),
        "warning" | "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        "off" => Ok(LevelFilter::Off),
        _ => Err(Error::Level(name.to_string())),
    }
}

fn open_sink(path: Option<&str>) -> Result<Box<dyn Write + Send>, Error> {
    match path {
        None => {
            use std::os::fd::AsFd;
            // Best effort: a stderr that stays blocking only costs the limit's lines.
            let _ = crate::stdio::never_block(std::io::stderr().as_fd());
            Ok(Box::new(std::io::stderr()))
        }
        Some(path) => OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            // A named pipe without a reader must not block the VMM.
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map(|f| {
                crate::seccomp::set_log_fd(f.as_raw_fd());
                Box::new(f) as Box<dyn Write + Send>
            })
            .map_err(|source| Error::Open {
                path: path.to_string(),
                source,
            }),
    }
}

/// Installs the logger; called once at start-up from the command line flags.
/// With `module`, only records of modules whose path starts with it are logged.
pub fn init(
    instance_id: &str,
    level: LevelFilter,
    path: Option<&str>,
    show_level: bool,
    show_origin: bool,
    module: Option<&str>,
) -> Result<(), Error> {
    let settings = Settings {
        sink: open_sink(path)?,
        show_level,
        show_origin,
        module: module.map(str::to_string),
    };
    let logger = LOGGER.get_or_init(|| Logger {
        instance_id: instance_id.to_string(),
        settings: Mutex::new(Settings {
            sink: Box::new(std::io::sink()),
            show_level: false,
            show_origin: false,
            module: None,
        }),
        limiter: Mutex::new(RateLimiter::default()),
    });
    if let Ok(mut s) = logger.settings.lock() {
        *s = settings;
    }
    // Only the first call installs it; later ones just reconfigure it above.
    let _ = log::set_logger(logger);
    log::set_max_level(level);
    Ok(())
}

/// Applies `PUT /logger`.
pub fn configure(config: &LoggerConfig) -> Result<(), Error> {
    let level = config.level.as_deref().map(parse_level).transpose()?;
    let sink = config
        .log_path
        .as_deref()
        .map(|p| open_sink(Some(p)))
        .transpose()?;
    if let Some(logger) = LOGGER.get() {
        if let Ok(mut s) = logger.settings.lock() {
            if let Some(sink) = sink {
                s.sink = sink;
            }
            s.show_level = config.show_level.unwrap_or(s.show_level);
            s.show_origin = config.show_log_origin.unwrap_or(s.show_origin);
            // As in Firecracker, a request without a module keeps the filter
            // (`--module`'s, say) rather than lifting it.
            if let Some(module) = &config.module {
                s.module = Some(module.clone());
            }
        }
    }
    if let Some(level) = level {
        log::set_max_level(level);
    }
    Ok(())
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let site = (
            record
                .file_static()
                .or(record.module_path_static())
                .unwrap_or("?"),
            record.line().unwrap_or(0),
        );
        let suppressed = match self.limiter.lock() {
            Ok(mut limiter) => limiter.admit(site, Instant::now()),
            Err(_) => return,
        };
        let Some(suppressed) = suppressed else {
            crate::metrics::METRICS.logger.missed_log_count.inc();
            return;
        };
        let Ok(mut s) = self.settings.lock() else {
            return;
        };
        if !module_allows(s.module.as_deref(), record.module_path()) {
            return;
        }
        let mut line = format!(
            "{} [{}:{}]",
            timestamp(SystemTime::now()),
            self.instance_id,
            std::thread::current().name().unwrap_or("main")
        );
        if s.show_level {
            line.push_str(&format!(" :{}", record.level()));
        }
        if s.show_origin {
            line.push_str(&format!(
                " :{}:{}",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            ));
        }
        line.push_str(&format!(" {}", record.args()));
        if suppressed > 0 {
            line.push_str(&format!(" ({suppressed} similar lines suppressed)"));
        }
        line.push('\n');
        // Logging must never take the VMM down: a full pipe drops the line.
        let _ = s.sink.write_all(line.as_bytes());
    }

    fn flush(&self) {
        if let Ok(mut s) = self.settings.lock() {
            let _ = s.sink.flush();
        }
    }
}

/// Whether the module filter lets through a record from `module_path`.
fn module_allows(filter: Option<&str>, module_path: Option<&str>) -> bool {
    filter.is_none_or(|prefix| module_path.unwrap_or_default().starts_with(prefix))
}

/// RFC 3339 UTC time with nanoseconds, without pulling in a date crate.
fn timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    // Below 2^49 (u64::MAX seconds / 86,400), so the sign bit is clear.
    let z = days.cast_signed() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn levels_parse_like_firecracker() {
        assert_eq!(parse_level("Warning").unwrap(), LevelFilter::Warn);
        assert_eq!(parse_level("DEBUG").unwrap(), LevelFilter::Debug);
        assert_eq!(parse_level("off").unwrap(), LevelFilter::Off);
        assert!(parse_level("loud").is_err());
    }

    #[test]
    fn each_call_site_logs_a_burst_per_window_then_counts() {
        let mut limiter = RateLimiter::default();
        let start = Instant::now();
        let site = ("devices/virtio/mmio.rs", 42);
        for _ in 0..SITE_BURST {
            assert_eq!(limiter.admit(site, start), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(limiter.admit(site, start), None);
        }
        // Another site has its own budget.
        assert_eq!(limiter.admit(("logger.rs", 1), start), Some(0));
        // The next window lets lines through again and reports the gap.
        let later = start + SITE_WINDOW;
        assert_eq!(limiter.admit(site, later), Some(1000));
        assert_eq!(limiter.admit(site, later), Some(0));
    }

    #[test]
    fn the_module_filter_keeps_records_under_its_prefix() {
        assert!(module_allows(None, Some("ember::api")));
        assert!(module_allows(
            Some("ember::api"),
            Some("ember::api::routes")
        ));
        assert!(!module_allows(
            Some("ember::api"),
            Some("ember::controller")
        ));
        assert!(!module_allows(Some("ember::api"), None));
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let t = UNIX_EPOCH + Duration::new(1_764_104_689, 5);
        assert_eq!(timestamp(t), "2025-11-25T21:04:49.000000005");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000"
        );
    }
}
