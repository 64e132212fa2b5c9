//! Metrics with Firecracker's group and field names: counters that the
//! devices, vCPUs, API and controller bump with one relaxed atomic add,
//! written as one JSON object per line to the metrics file (`PUT /metrics`,
//! `--metrics-path`) on `FlushMetrics` and every 60 seconds, and read as
//! Prometheus text on `GET /metrics` (ember's extension).
//!
//! As in Firecracker, a flush reports what each counter counted since the
//! previous flush, and a latency the last value measured; Prometheus gets
//! running totals, as its counters are.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// How often a configured metrics file gets a line, as in Firecracker.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The metrics file cannot be opened.
    #[error("cannot open the metrics file '{path}': {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    /// Metrics go to one file for the life of the process, as in Firecracker.
    #[error("metrics are already configured: they cannot be reconfigured")]
    AlreadyConfigured,
    /// `FlushMetrics` before `PUT /metrics` (or `--metrics-path`).
    #[error("metrics are not configured: PUT /metrics first")]
    NotConfigured,
    /// The line could not be written (a named pipe nobody reads, say).
    #[error("cannot write the metrics: {0}")]
    Write(std::io::Error),
}

/// An event count.
#[derive(Debug, Default)]
pub struct Counter {
    total: AtomicU64,
    flushed: AtomicU64,
}

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// What was counted since the previous call.
    fn take_delta(&self) -> u64 {
        let total = self.total();
        total.wrapping_sub(self.flushed.swap(total, Ordering::Relaxed))
    }
}

/// A measured value: the last one stands.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the microseconds since `start`.
    pub fn set_since(&self, start: std::time::Instant) {
        self.set(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
}

/// A group of metrics, as one JSON object of a flush.
pub trait Group: Send + Sync {
    fn counters(&self) -> Vec<(&'static str, &Counter)>;
    fn gauges(&self) -> Vec<(&'static str, &Gauge)> {
        Vec::new()
    }
}

/// Declares a group of counters (and gauges after a `;`).
macro_rules! group {
    ($(#[$doc:meta])* $name:ident { $($counter:ident),* $(,)? $(; $($gauge:ident),* $(,)?)? }) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub struct $name {
            $(pub $counter: Counter,)*
            $($(pub $gauge: Gauge,)*)?
        }

        impl Group for $name {
            fn counters(&self) -> Vec<(&'static str, &Counter)> {
                vec![$((stringify!($counter), &self.$counter)),*]
            }

            fn gauges(&self) -> Vec<(&'static str, &Gauge)> {
                vec![$($((stringify!($gauge), &self.$gauge)),*)?]
            }
        }
    };
}

group!(
    /// The API server.
    ApiServerMetrics { ; process_startup_time_us }
);
group!(
    /// `GET` requests, by route.
    GetRequestsMetrics { instance_info_count, machine_cfg_count, mmds_count, vmm_version_count }
);
group!(
    /// `PUT` requests, by route.
    PutRequestsMetrics {
        actions_count, actions_fails, boot_source_count, boot_source_fails, drive_count,
        drive_fails, logger_count, logger_fails, machine_cfg_count, machine_cfg_fails,
        metrics_count, metrics_fails, network_count, network_fails, mmds_count, mmds_fails,
        vsock_count, vsock_fails, entropy_count, entropy_fails, balloon_count, balloon_fails,
    }
);
group!(
    /// `PATCH` requests, by route.
    PatchRequestsMetrics {
        drive_count, drive_fails, network_count, network_fails, machine_cfg_count,
        machine_cfg_fails, mmds_count, mmds_fails, balloon_count, balloon_fails,
    }
);
group!(
    /// One drive (`block_<id>`), and all of them (`block`).
    BlockMetrics {
        queue_event_count, read_count, read_bytes, write_count, write_bytes, flush_count,
        invalid_reqs_count, execute_fails, update_count, update_fails,
        rate_limiter_event_count, rate_limiter_throttled_events,
    }
);
group!(
    /// One interface (`net_<id>`), and all of them (`net`).
    NetMetrics {
        rx_queue_event_count, rx_tap_event_count, rx_bytes_count, rx_packets_count, rx_fails,
        tx_queue_event_count, tx_bytes_count, tx_packets_count, tx_malformed_frames, tap_read_fails, tap_write_fails, rx_rate_limiter_throttled,
        tx_rate_limiter_throttled, rx_event_rate_limiter_count, tx_rate_limiter_event_count,
    }
);
group!(
    /// The vsock device.
    VsockMetrics {
        rx_queue_event_count, tx_queue_event_count, ev_queue_event_count, muxer_event_count,
        tx_packets_count, tx_malformed_packets,
    }
);
group!(
    /// The entropy device.
    EntropyMetrics {
        entropy_event_count, entropy_bytes, host_rng_fails, entropy_rate_limiter_throttled,
        rate_limiter_event_count,
    }
);
group!(
    /// The balloon device.
    BalloonMetrics {
        inflate_count, deflate_count, stats_updates_count, stats_update_fails,
        free_page_report_count, free_page_report_freed, free_page_report_fails,
        free_page_hint_count, free_page_hint_freed, free_page_hint_fails,
    }
);
group!(
    /// Seccomp violations: at most the one that ends the process, in its last line.
    SeccompMetrics { num_faults }
);
group!(
    /// Fatal signals: at most the one that ends the process, in its last line.
    SignalsMetrics { sigbus, sigsegv, sigxfsz, sigxcpu, sighup, sigill }
);
group!(
    /// The vCPUs' exits.
    VcpuMetrics { exit_io_in, exit_io_out, exit_mmio_read, exit_mmio_write, failures }
);
group!(
    /// The serial console.
    UartMetrics { read_count, write_count, missed_write_count }
);
group!(
    /// The main thread's event loop.
    VmmMetrics { device_events }
);
group!(
    /// The metadata service inside the net devices.
    MmdsMetrics { rx_accepted, tx_frames }
);
group!(
    /// The logger and this module.
    LoggerMetrics { missed_log_count, missed_metrics_count, metrics_fails }
);
group!(
    /// Requests that used deprecated fields.
    DeprecatedApiMetrics { deprecated_http_api_calls }
);
group!(
    /// The last duration of each slow operation, in microseconds.
    LatencyMetrics {
        ;
        full_create_snapshot, diff_create_snapshot, load_snapshot, pause_vm, resume_vm,
    }
);
group!(
    /// ember's own: invocations through `POST /invocations` and snapshot
    /// loads (a flush also reports the percentiles of the invocations'
    /// latency since the previous one).
    EmberMetrics {
        invocations, invocation_errors, invocation_timeouts, snapshot_loads;
        page_faults_served, pages_prefetched
    }
);

/// Invocation latencies in power-of-two buckets of microseconds: fixed
/// memory however many invocations, exact enough for percentiles.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Bucket `i` counts values below 2^i us (the last one, all the rest).
    buckets: [Counter; 32],
    sum_us: Counter,
}

impl Histogram {
    pub fn record(&self, value: Duration) {
        let us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.buckets[bucket.min(self.buckets.len() - 1)].inc();
        self.sum_us.add(us);
    }

    /// The bucket bounds (us) of percentiles `ps` of what was recorded since
    /// the previous call; zeros when nothing was.
    fn take_percentiles(&self, ps: &[u64]) -> Vec<u64> {
        let deltas: Vec<u64> = self.buckets.iter().map(Counter::take_delta).collect();
        let count: u64 = deltas.iter().sum();
        ps.iter()
            .map(|p| {
                let rank = (count * p).div_ceil(100);
                let mut seen = 0;
                deltas
                    .iter()
                    .position(|&n| {
                        seen += n;
                        count > 0 && seen >= rank
                    })
                    .map_or(0, |i| 1u64 << i)
            })
            .collect()
    }
}

/// Every metric of the process (one ember runs one microVM).
#[derive(Default)]
pub struct Metrics {
    pub api_server: ApiServerMetrics,
    pub get_api_requests: GetRequestsMetrics,
    pub put_api_requests: PutRequestsMetrics,
    pub patch_api_requests: PatchRequestsMetrics,
    pub vsock: VsockMetrics,
    pub entropy: EntropyMetrics,
    pub balloon: BalloonMetrics,
    pub seccomp: SeccompMetrics,
    pub signals: SignalsMetrics,
    pub vcpu: VcpuMetrics,
    pub uart: UartMetrics,
    pub vmm: VmmMetrics,
    pub mmds: MmdsMetrics,
    pub logger: LoggerMetrics,
    pub deprecated_api: DeprecatedApiMetrics,
    pub latencies_us: LatencyMetrics,
    pub ember: EmberMetrics,
    pub invocation_latency: Histogram,
    drives: Mutex<Vec<(String, Arc<BlockMetrics>)>>,
    interfaces: Mutex<Vec<(String, Arc<NetMetrics>)>>,
    sink: Mutex<Option<File>>,
    /// Brings values kept elsewhere up to date before they are reported.
    refresher: Mutex<Option<Refresher>>,
}

/// A source of values that lives outside ember's own counters (a page-fault
/// handler's reports, say), read when the metrics are.
pub type Refresher = Box<dyn Fn(&Metrics) + Send>;

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The sink's descriptor, for [`write_last_words`]: a dying thread's signal
/// handler may not lock or allocate, so it cannot use the `Metrics` sink.
static SINK_FD: AtomicI32 = AtomicI32::new(-1);

/// From a signal handler about to end the process: writes one metrics line,
/// `{"<group>":{"<field>":1}}`, saying why (a seccomp fault, a fatal signal).
/// Async-signal-safe: a stack buffer and one `write`, nothing else.
pub fn write_last_words(group: &str, field: &str) {
    let fd = SINK_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let parts: [&[u8]; 5] = [
        b"{\"",
        group.as_bytes(),
        b"\":{\"",
        field.as_bytes(),
        b"\":1}}\n",
    ];
    let mut line = [0u8; 96];
    let mut len = 0;
    for part in parts {
        let Some(slot) = line.get_mut(len..len + part.len()) else {
            return;
        };
        slot.copy_from_slice(part);
        len += part.len();
    }
    // SAFETY: write(2) of a live stack buffer is async-signal-safe.
    unsafe { libc::write(fd, line.as_ptr().cast(), len) };
}

/// `id`'s entry in `list`, made if it is new: a restore or a second boot
/// attempt finds the device's counters again.
fn entry<T: Default>(list: &Mutex<Vec<(String, Arc<T>)>>, id: &str) -> Arc<T> {
    let Ok(mut list) = list.lock() else {
        return Arc::default();
    };
    if let Some((_, metrics)) = list.iter().find(|(i, _)| i == id) {
        return metrics.clone();
    }
    let metrics = Arc::<T>::default();
    list.push((id.to_string(), metrics.clone()));
    metrics
}

impl Metrics {
    /// The counters of drive `id`.
    pub fn drive(&self, id: &str) -> Arc<BlockMetrics> {
        entry(&self.drives, id)
    }

    /// The counters of interface `id`.
    pub fn interface(&self, id: &str) -> Arc<NetMetrics> {
        entry(&self.interfaces, id)
    }

    /// Sends every flush from now on to the file or named pipe at `path`.
    pub fn configure(&self, path: &str) -> Result<(), Error> {
        let mut sink = self.sink.lock().map_err(|_| Error::AlreadyConfigured)?;
        if sink.is_some() {
            return Err(Error::AlreadyConfigured);
        }
        let open_err = |source| Error::Open {
            path: path.to_string(),
            source,
        };
        let is_fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
        let file = OpenOptions::new()
            // A named pipe opened for reading too never waits for a reader.
            .read(is_fifo)
            .append(true)
            .create(!is_fifo)
            .mode(0o600)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(open_err)?;
        SINK_FD.store(file.as_raw_fd(), Ordering::Relaxed);
        *sink = Some(file);
        Ok(())
    }

    pub fn is_configured(&self) -> bool {
        self.sink.lock().is_ok_and(|s| s.is_some())
    }

    /// Writes one line with what happened since the previous flush.
    /// Reads `refresher` before every flush and Prometheus answer from now on.
    pub fn on_refresh(&self, refresher: Refresher) {
        if let Ok(mut slot) = self.refresher.lock() {
            *slot = Some(refresher);
        }
    }

    fn refresh(&self) {
        if let Ok(slot) = self.refresher.lock() {
            if let Some(refresher) = slot.as_ref() {
                refresher(self);
            }
        }
    }

    pub fn flush(&self) -> Result<(), Error> {
        self.refresh();
        let mut sink = self.sink.lock().map_err(|_| Error::NotConfigured)?;
        let file = sink.as_mut().ok_or(Error::NotConfigured)?;
        let mut line = self.snapshot_json().to_string();
        line.push('\n');
        // One write: a pipe takes a line of up to PIPE_BUF whole or not at all.
        match file.write(line.as_bytes()) {
            Ok(n) if n == line.len() => Ok(()),
            Ok(_) => {
                self.logger.missed_metrics_count.inc();
                Err(Error::Write(std::io::ErrorKind::WriteZero.into()))
            }
            Err(e) => {
                self.logger.metrics_fails.inc();
                Err(Error::Write(e))
            }
        }
    }

    /// Every group's changes since the previous call, as a flush writes them.
    fn snapshot_json(&self) -> Value {
        let mut out = Map::new();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        out.insert("utc_timestamp_ms".into(), now.into());
        for (name, group) in self.static_groups() {
            out.insert(name.into(), group_json(group));
        }
        let percentiles = self.invocation_latency.take_percentiles(&[50, 90, 99]);
        if let Some(Value::Object(ember)) = out.get_mut("ember") {
            for (name, value) in ["latency_p50_us", "latency_p90_us", "latency_p99_us"]
                .into_iter()
                .zip(percentiles)
            {
                ember.insert(name.into(), value.into());
            }
        }
        let devices = |kind: &str, each: Vec<(String, Map<String, Value>)>| {
            let mut all = Map::new();
            for (_, fields) in &each {
                for (field, value) in fields {
                    let sum = all.get(field).and_then(Value::as_u64).unwrap_or(0)
                        + value.as_u64().unwrap_or(0);
                    all.insert(field.clone(), sum.into());
                }
            }
            let mut groups = vec![(kind.to_string(), Value::Object(all))];
            groups.extend(
                each.into_iter()
                    .map(|(id, fields)| (format!("{kind}_{id}"), Value::Object(fields))),
            );
            groups
        };
        let drives = self.device_json(&self.drives);
        let interfaces = self.device_json(&self.interfaces);
        for (name, value) in devices("block", drives)
            .into_iter()
            .chain(devices("net", interfaces))
        {
            out.insert(name, value);
        }
        Value::Object(out)
    }

    fn device_json<T: Group>(
        &self,
        list: &Mutex<Vec<(String, Arc<T>)>>,
    ) -> Vec<(String, Map<String, Value>)> {
        let Ok(list) = list.lock() else {
            return Vec::new();
        };
        list.iter()
            .map(|(id, group)| match group_json(group.as_ref()) {
                Value::Object(fields) => (id.clone(), fields),
                _ => (id.clone(), Map::new()),
            })
            .collect()
    }

    fn static_groups(&self) -> [(&'static str, &dyn Group); 17] {
        [
            ("api_server", &self.api_server),
            ("get_api_requests", &self.get_api_requests),
            ("put_api_requests", &self.put_api_requests),
            ("patch_api_requests", &self.patch_api_requests),
            ("vsock", &self.vsock),
            ("entropy", &self.entropy),
            ("balloon", &self.balloon),
            ("seccomp", &self.seccomp),
            ("signals", &self.signals),
            ("vcpu", &self.vcpu),
            ("uart", &self.uart),
            ("vmm", &self.vmm),
            ("mmds", &self.mmds),
            ("logger", &self.logger),
            ("deprecated_api", &self.deprecated_api),
            ("latencies_us", &self.latencies_us),
            ("ember", &self.ember),
        ]
    }

    /// Every metric as Prometheus text: counters as running totals named
    /// `ember_<group>_<field>_total`, per-device ones labelled with the
    /// device's id, latencies as gauges, invocation latency as a histogram.
    pub fn prometheus(&self) -> String {
        self.refresh();
        let mut text = String::new();
        for (group, metrics) in self.static_groups() {
            for (field, counter) in metrics.counters() {
                counter_family(&mut text, group, field, &[(None, counter.total())]);
            }
            for (field, gauge) in metrics.gauges() {
                let name = format!("ember_{group}_{field}");
                let _ = writeln!(text, "# TYPE {name} gauge\n{name} {}", gauge.get());
            }
        }
        self.device_families(&mut text, "block", "drive", &self.drives);
        self.device_families(&mut text, "net", "iface", &self.interfaces);
        self.histogram_family(&mut text);
        text
    }

    fn device_families<T: Group + Default>(
        &self,
        text: &mut String,
        group: &str,
        label: &str,
        list: &Mutex<Vec<(String, Arc<T>)>>,
    ) {
        let Ok(list) = list.lock() else {
            return;
        };
        for (index, (field, _)) in T::default().counters().into_iter().enumerate() {
            let values: Vec<(Option<String>, u64)> = list
                .iter()
                .filter_map(|(id, metrics)| {
                    let (_, counter) = metrics.counters().into_iter().nth(index)?;
                    Some((Some(format!("{label}=\"{}\"", escape(id))), counter.total()))
                })
                .collect();
            counter_family(text, group, field, &values);
        }
    }

    fn histogram_family(&self, text: &mut String) {
        let name = "ember_invocation_latency_us";
        let _ = writeln!(text, "# TYPE {name} histogram");
        let mut cumulative = 0;
        let buckets = &self.invocation_latency.buckets;
        for (i, bucket) in buckets.iter().enumerate().take(buckets.len() - 1) {
            cumulative += bucket.total();
            let _ = writeln!(text, "{name}_bucket{{le=\"{}\"}} {cumulative}", 1u64 << i);
        }
        cumulative += buckets[buckets.len() - 1].total();
        let _ = writeln!(text, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            text,
            "{name}_sum {}",
            self.invocation_latency.sum_us.total()
        );
        let _ = writeln!(text, "{name}_count {cumulative}");
    }
}

fn group_json(group: &dyn Group) -> Value {
    let mut fields = Map::new();
    for (name, counter) in group.counters() {
        fields.insert(name.into(), counter.take_delta().into());
    }
    for (name, gauge) in group.gauges() {
        fields.insert(name.into(), gauge.get().into());
    }
    Value::Object(fields)
}

/// One counter family: its type line and a sample per label set.
fn counter_family(text: &mut String, group: &str, field: &str, values: &[(Option<String>, u64)]) {
    let name = format!("ember_{group}_{field}_total");
    let _ = writeln!(text, "# TYPE {name} counter");
    for (labels, value) in values {
        match labels {
            Some(labels) => {
                let _ = writeln!(text, "{name}{{{labels}}} {value}");
            }
            None => {
                let _ = writeln!(text, "{name} {value}");
            }
        }
    }
}

/// A label value as Prometheus's text format quotes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_reports_what_each_counter_counted_since_the_previous_one() {
        let metrics = Metrics::default();
        metrics.vcpu.exit_io_out.add(3);
        metrics.drive("rootfs").read_count.add(2);
        metrics.drive("data").read_count.add(5);
        metrics.latencies_us.pause_vm.set(42);
        let first = metrics.snapshot_json();
        assert_eq!(first["vcpu"]["exit_io_out"], 3);
        assert_eq!(first["block_rootfs"]["read_count"], 2);
        assert_eq!(first["block_data"]["read_count"], 5);
        assert_eq!(first["block"]["read_count"], 7, "the sum over drives");
        assert_eq!(first["latencies_us"]["pause_vm"], 42);
        assert!(first["utc_timestamp_ms"].as_u64().unwrap() > 0);
        metrics.vcpu.exit_io_out.inc();
        let second = metrics.snapshot_json();
        assert_eq!(second["vcpu"]["exit_io_out"], 1);
        assert_eq!(second["block"]["read_count"], 0);
        assert_eq!(second["latencies_us"]["pause_vm"], 42, "a latency stays");
        assert_eq!(metrics.vcpu.exit_io_out.total(), 4, "totals run on");
    }

    #[test]
    fn invocation_latency_percentiles_come_from_power_of_two_buckets() {
        let histogram = Histogram::default();
        assert_eq!(histogram.take_percentiles(&[50, 99]), vec![0, 0]);
        for us in [100, 120, 150, 900, 3000] {
            histogram.record(Duration::from_micros(us));
        }
        // 100-150 us fall below 256, 900 below 1024, 3000 below 4096.
        assert_eq!(
            histogram.take_percentiles(&[50, 80, 99]),
            vec![256, 1024, 4096]
        );
        assert_eq!(histogram.take_percentiles(&[50]), vec![0], "nothing since");
    }

    #[test]
    fn prometheus_text_parses_and_holds_running_totals() {
        let metrics = Metrics::default();
        metrics.drive("rootfs").write_bytes.add(4096);
        metrics.interface("eth0").tx_packets_count.add(9);
        metrics.ember.invocations.add(2);
        metrics
            .invocation_latency
            .record(Duration::from_micros(300));
        metrics.invocation_latency.record(Duration::from_micros(5));
        let _ = metrics.snapshot_json();
        let text = metrics.prometheus();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
        let value = |name: &str, label: Option<(&str, &str)>| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        };
        assert_eq!(
            value("ember_block_write_bytes_total", Some(("drive", "rootfs"))),
            4096.0
        );
        assert_eq!(
            value("ember_net_tx_packets_count_total", Some(("iface", "eth0"))),
            9.0
        );
        assert_eq!(
            value("ember_ember_invocations_total", None),
            2.0,
            "not reset by a flush"
        );
        let histogram = scrape
            .samples
            .iter()
            .find(|s| s.metric == "ember_invocation_latency_us")
            .expect("the latency histogram");
        let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
            panic!("not a histogram: {:?}", histogram.value);
        };
        let below = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
        assert_eq!(below(8.0), Some(1.0));
        assert_eq!(below(512.0), Some(2.0));
    }

    #[test]
    fn label_values_are_quoted_as_the_text_format_says() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
