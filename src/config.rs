//! The microVM's configuration as Firecracker's API and `--config-file`
//! spell it: request bodies, their validation, and the full VM configuration.

use serde::{Deserialize, Serialize};

pub const MAX_VCPUS: u8 = 32;
pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEM_MIB: u64 = 128;
/// Firecracker's default command line, for guests configured without `boot_args`.
pub const DEFAULT_BOOT_ARGS: &str =
    "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Outside what the MP table and ember support.
    #[error("vcpu_count must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u64),
    /// No guest memory.
    #[error("mem_size_mib must be at least 1, got 0")]
    MemSize,
    /// More guest memory than ember maps.
    #[error("mem_size_mib {0} is larger than ember supports ({max} MiB)", max = MAX_MEM_MIB)]
    MemTooLarge(u64),
    /// SMT would need sibling threads in the CPU topology ember gives guests.
    #[error("smt is not supported by ember: each vCPU is a core of its own")]
    Smt,
    /// CPU templates are not implemented.
    #[error("cpu_template '{0}' is not supported by ember; omit it or use \"None\"")]
    CpuTemplate(String),
    /// A huge page size ember cannot back guest memory with.
    #[error("huge_pages '{0}' is not supported: use \"None\" or \"2M\"")]
    HugePages(String),
    /// Guest memory that is not a whole number of huge pages.
    #[error("mem_size_mib {0} is not a whole number of 2 MiB huge pages")]
    HugePageMultiple(u64),
    /// A drive without a host file (a vhost-user socket instead).
    #[error(
        "drive '{0}': path_on_host is required (vhost-user drives are not supported by ember)"
    )]
    DrivePath(String),
    /// Only synchronous I/O is implemented.
    #[error("drive '{0}': io_engine '{1}' is not supported by ember; use \"Sync\"")]
    IoEngine(String, String),
    /// A drive id Firecracker would refuse.
    #[error("drive id '{0}' is invalid: use 1 to 64 characters from [a-zA-Z0-9_-]")]
    DriveId(String),
    /// A guest CID the vsock specification reserves.
    #[error("guest_cid must be at least 3 (0-2 are reserved), got {0}")]
    GuestCid(u32),
    /// A vsock without a host socket path.
    #[error("uds_path must not be empty")]
    UdsPath,
    /// An invocation time limit of zero.
    #[error("timeout_ms must be at least 1")]
    Timeout,
    /// More concurrent invocations than the guest has connections for.
    #[error("max_concurrent_invocations must be between 1 and {max}, got {got}")]
    Concurrency { got: usize, max: usize },
    /// A snapshot path that is empty.
    #[error("{0} must not be empty")]
    EmptyPath(&'static str),
    /// The guest memory named twice on snapshot load.
    #[error("give the guest memory as either mem_backend or mem_file_path, not both")]
    TwoMemBackends,
    /// The guest memory not named on snapshot load.
    #[error("the guest memory is missing: give mem_backend (or the deprecated mem_file_path)")]
    NoMemBackend,
    /// An interface id Firecracker would refuse.
    #[error("iface_id '{0}' is invalid: use 1 to 64 characters from [a-zA-Z0-9_-]")]
    IfaceId(String),
    /// A TAP name Linux would refuse.
    #[error("network interface '{0}': host_dev_name must be 1 to 15 bytes without '/' or whitespace, got '{1}'")]
    HostDevName(String, String),
    /// A MAC address that is not six colon-separated hex bytes, or not unicast.
    #[error("network interface '{0}': guest_mac '{1}' is invalid: use a unicast address like 06:00:ac:10:00:02")]
    GuestMac(String, String),
    /// An MTU Firecracker would refuse.
    #[error("network interface '{0}': mtu must be between 68 and 65535, got {1}")]
    Mtu(String, u64),
    /// An MMDS address outside the link-local range.
    #[error("mmds-config: ipv4_address '{0}' is invalid: use a link-local address in 169.254.1.0-169.254.254.255")]
    MmdsAddress(String),
    /// MMDS reachable from nowhere.
    #[error("mmds-config: network_interfaces must name at least one interface")]
    MmdsNoInterface,
    /// A balloon larger than the guest.
    #[error("balloon: amount_mib {0} is more than the guest's memory ({1} MiB)")]
    BalloonTooBig(u32, u64),
    /// hugetlbfs pages cannot be given back 4 KiB at a time.
    #[error("a balloon cannot be used with huge_pages \"2M\": hugetlbfs pages are not given back 4 KiB at a time")]
    BalloonHugePages,
    /// A config file that names one device twice.
    #[error("{0} '{1}' is configured twice")]
    DuplicateId(&'static str, String),
    /// Two overrides for one interface.
    #[error("network_overrides names interface '{0}' twice")]
    DuplicateOverride(String),
}

/// Largest guest ember maps: 1 TiB.
pub const MAX_MEM_MIB: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    pub kernel_image_path: String,
    #[serde(default)]
    pub initrd_path: Option<String>,
    #[serde(default)]
    pub boot_args: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    #[default]
    Unsafe,
    Writeback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    pub drive_id: String,
    pub is_root_device: bool,
    #[serde(default)]
    pub partuuid: Option<String>,
    #[serde(default)]
    pub cache_type: CacheType,
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_read_only: bool,
    #[serde(default)]
    pub path_on_host: Option<String>,
    #[serde(default, deserialize_with = "optional_object")]
    pub rate_limiter: Option<RateLimiterConfig>,
    #[serde(default)]
    pub io_engine: Option<String>,
    #[serde(default)]
    pub socket: Option<String>,
}

impl DriveConfig {
    /// The host path, once the drive has been validated.
    pub fn path(&self) -> &str {
        self.path_on_host.as_deref().unwrap_or_default()
    }

    pub fn validate(&self) -> Result<(), Error> {
        if !is_valid_id(&self.drive_id) {
            return Err(Error::DriveId(self.drive_id.clone()));
        }
        if self.path_on_host.is_none() || self.socket.is_some() {
            return Err(Error::DrivePath(self.drive_id.clone()));
        }
        match self.io_engine.as_deref() {
            None | Some("Sync") => Ok(()),
            Some(other) => Err(Error::IoEngine(self.drive_id.clone(), other.to_string())),
        }
    }
}

/// `PATCH /drives/{id}`: what may change on a running VM.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    pub drive_id: String,
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// Replaces the buckets it names (see [`RateLimiterConfig::patched`]).
    #[serde(default, deserialize_with = "optional_object")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// Firecracker's token bucket: `size` tokens refilled evenly over
/// `refill_time` milliseconds, plus `one_time_burst` tokens given once. A
/// bucket of size 0 or refill time 0 limits nothing, as in Firecracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    pub size: u64,
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    pub refill_time: u64,
}

/// Firecracker's rate limiter: a bucket of bytes and one of operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, deserialize_with = "optional_object")]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default, deserialize_with = "optional_object")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// `current` after a `PATCH` with `update`, as Firecracker applies one:
    /// a bucket the update names replaces the current one, a bucket it
    /// omits stays. `None` once no bucket limits anything.
    pub fn patched(current: Option<Self>, update: &Self) -> Option<Self> {
        let current = current.unwrap_or_default();
        let limits = |b: &TokenBucketConfig| b.size > 0 && b.refill_time > 0;
        let merged = RateLimiterConfig {
            bandwidth: update.bandwidth.or(current.bandwidth).filter(limits),
            ops: update.ops.or(current.ops).filter(limits),
        };
        (merged.bandwidth.is_some() || merged.ops.is_some()).then_some(merged)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// Shown as `"None"` when unset, as Firecracker shows it.
    #[serde(default, serialize_with = "huge_pages_or_none")]
    pub huge_pages: Option<String>,
}

fn huge_pages_or_none<S: serde::Serializer>(
    huge_pages: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(huge_pages.as_deref().unwrap_or("None"))
}

/// A nested struct from a JSON object only: serde also reads a struct from an
/// array (its fields in order), which no client means, so `[]` where an object
/// belongs is refused as the wrong type.
fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::{Error as _, Unexpected};
    let value = serde_json::Value::deserialize(deserializer)?;
    let unexpected = match &value {
        serde_json::Value::Object(_) => return T::deserialize(value).map_err(D::Error::custom),
        serde_json::Value::Array(_) => Unexpected::Seq,
        serde_json::Value::String(s) => Unexpected::Str(s),
        serde_json::Value::Bool(b) => Unexpected::Bool(*b),
        serde_json::Value::Number(_) => Unexpected::Other("a number"),
        serde_json::Value::Null => Unexpected::Unit,
    };
    Err(D::Error::invalid_type(unexpected, &"a JSON object"))
}

/// As [`object`], for an optional one: `null` or left out is `None`.
fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    value
        .map(|v| object(v).map_err(serde::de::Error::custom))
        .transpose()
}

/// As [`object`], for each element of a list.
fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let values = Vec::<serde_json::Value>::deserialize(deserializer)?;
    values
        .into_iter()
        .map(|v| object(v).map_err(serde::de::Error::custom))
        .collect()
}

/// Reads `null` as the type's default: Firecracker's optional booleans are
/// `null` in its own `GET /vm/config`, and such exports must load here.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: DEFAULT_VCPUS,
            mem_size_mib: DEFAULT_MEM_MIB,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: None,
        }
    }
}

/// `PATCH /machine-config`: any subset of the fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    pub vcpu_count: Option<u64>,
    pub mem_size_mib: Option<u64>,
    pub smt: Option<bool>,
    pub track_dirty_pages: Option<bool>,
    pub cpu_template: Option<String>,
    pub huge_pages: Option<String>,
}

impl MachineConfig {
    /// The configuration with `update` applied, if the result is valid.
    pub fn updated(&self, update: &MachineConfigUpdate) -> Result<MachineConfig, Error> {
        let vcpu_count = match update.vcpu_count {
            Some(n) => u8::try_from(n).map_err(|_| Error::VcpuCount(n))?,
            None => self.vcpu_count,
        };
        let config = MachineConfig {
            vcpu_count,
            mem_size_mib: update.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: update.smt.unwrap_or(self.smt),
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            cpu_template: update
                .cpu_template
                .clone()
                .or_else(|| self.cpu_template.clone()),
            huge_pages: update
                .huge_pages
                .clone()
                .or_else(|| self.huge_pages.clone()),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(Error::VcpuCount(u64::from(self.vcpu_count)));
        }
        if self.mem_size_mib == 0 {
            return Err(Error::MemSize);
        }
        if self.mem_size_mib > MAX_MEM_MIB {
            return Err(Error::MemTooLarge(self.mem_size_mib));
        }
        if self.smt {
            return Err(Error::Smt);
        }
        if let Some(t) = self.cpu_template.as_deref().filter(|t| *t != "None") {
            return Err(Error::CpuTemplate(t.to_string()));
        }
        match self.huge_pages.as_deref() {
            None | Some("None") => {}
            Some(HUGE_PAGES_2M) if !self.mem_size_mib.is_multiple_of(2) => {
                return Err(Error::HugePageMultiple(self.mem_size_mib))
            }
            Some(HUGE_PAGES_2M) => {}
            Some(other) => return Err(Error::HugePages(other.to_string())),
        }
        Ok(())
    }

    /// Whether guest memory is backed by 2 MiB huge pages, once validated.
    pub fn huge_pages(&self) -> bool {
        self.huge_pages.as_deref() == Some(HUGE_PAGES_2M)
    }
}

/// Firecracker's name for 2 MiB huge pages.
const HUGE_PAGES_2M: &str = "2M";

/// `PUT /machine-config` takes the full shape with vcpu_count as any integer,
/// so an out-of-range count is a validation error, not a parse error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigBody {
    pub vcpu_count: u64,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub cpu_template: Option<String>,
    #[serde(default)]
    pub huge_pages: Option<String>,
}

impl MachineConfigBody {
    pub fn into_config(self) -> Result<MachineConfig, Error> {
        MachineConfig::default().updated(&MachineConfigUpdate {
            vcpu_count: Some(self.vcpu_count),
            mem_size_mib: Some(self.mem_size_mib),
            smt: Some(self.smt),
            track_dirty_pages: Some(self.track_dirty_pages),
            cpu_template: self.cpu_template,
            huge_pages: self.huge_pages,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    #[serde(default)]
    pub log_path: Option<String>,
    #[serde(default)]
    pub level: Option<String>,
    /// Left out (or `null`), the current setting stays, as in Firecracker.
    #[serde(default)]
    pub show_level: Option<bool>,
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    #[serde(default)]
    pub module: Option<String>,
}

impl LoggerConfig {
    /// The settings in force after this `PUT /logger` on top of `previous`:
    /// what the request leaves out stays as it was.
    pub fn over(self, previous: Option<&LoggerConfig>) -> LoggerConfig {
        let Some(previous) = previous else {
            return self;
        };
        LoggerConfig {
            log_path: self.log_path.or_else(|| previous.log_path.clone()),
            level: self.level.or_else(|| previous.level.clone()),
            show_level: self.show_level.or(previous.show_level),
            show_log_origin: self.show_log_origin.or(previous.show_log_origin),
            module: self.module.or_else(|| previous.module.clone()),
        }
    }
}

/// `PUT /vsock`: Firecracker's hybrid vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub guest_cid: u32,
    pub uds_path: String,
    /// Accepted and ignored, as Firecracker does since it deprecated it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// The first CID a guest may have: 0-2 are the hypervisor, local and host.
pub const MIN_GUEST_CID: u32 = 3;

impl VsockConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.guest_cid < MIN_GUEST_CID {
            return Err(Error::GuestCid(self.guest_cid));
        }
        if self.uds_path.is_empty() {
            return Err(Error::UdsPath);
        }
        Ok(())
    }
}

/// `PUT /network-interfaces/{id}`: a virtio-net device on a host TAP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default)]
    pub guest_mac: Option<String>,
    /// Offered to the guest with VIRTIO_NET_F_MTU when set.
    #[serde(default)]
    pub mtu: Option<u64>,
    #[serde(default, deserialize_with = "optional_object")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, deserialize_with = "optional_object")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Linux's limit for an interface name, without the NUL.
pub const MAX_IFNAME_LEN: usize = 15;
/// The MTU range Firecracker accepts (68 is IPv4's minimum).
const MTU_RANGE: std::ops::RangeInclusive<u64> = 68..=65535;

impl NetworkInterfaceConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if !is_valid_id(&self.iface_id) {
            return Err(Error::IfaceId(self.iface_id.clone()));
        }
        check_host_dev_name(&self.iface_id, &self.host_dev_name)?;
        if let Some(mac) = &self.guest_mac {
            parse_mac(mac).ok_or_else(|| Error::GuestMac(self.iface_id.clone(), mac.clone()))?;
        }
        if let Some(mtu) = self.mtu.filter(|m| !MTU_RANGE.contains(m)) {
            return Err(Error::Mtu(self.iface_id.clone(), mtu));
        }
        Ok(())
    }

    /// The guest's MAC address, once validated.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.guest_mac.as_deref().and_then(parse_mac)
    }

    /// The MTU offered to the guest, once validated.
    pub fn mtu(&self) -> Option<u16> {
        self.mtu.and_then(|m| u16::try_from(m).ok())
    }
}

/// `PATCH /network-interfaces/{id}`: Firecracker lets only the rate limiters change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    pub iface_id: String,
    #[serde(default, deserialize_with = "optional_object")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, deserialize_with = "optional_object")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

fn check_host_dev_name(iface_id: &str, name: &str) -> Result<(), Error> {
    let valid = (1..=MAX_IFNAME_LEN).contains(&name.len())
        && !name.contains('/')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(Error::HostDevName(iface_id.to_string(), name.to_string()));
    }
    Ok(())
}

/// Six colon-separated hex bytes, unicast (the multicast bit clear).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    (parts.next().is_none() && mac[0] & 1 == 0).then_some(mac)
}

/// MMDS protocol versions: V2 requires session tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    #[default]
    V1,
    V2,
}

/// `PUT /mmds/config`: which interfaces reach the metadata service, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    #[serde(default)]
    pub version: MmdsVersion,
    pub network_interfaces: Vec<String>,
    #[serde(default)]
    pub ipv4_address: Option<String>,
    #[serde(default)]
    pub imds_compat: bool,
}

/// Where MMDS answers unless configured otherwise (EC2's address).
pub const DEFAULT_MMDS_ADDRESS: [u8; 4] = [169, 254, 169, 254];

impl MmdsConfig {
    /// The service's address: link-local (169.254.1.0 - 169.254.254.255, the
    /// range RFC 3927 lets hosts use), as Firecracker requires.
    pub fn address(&self) -> Result<[u8; 4], Error> {
        let Some(text) = &self.ipv4_address else {
            return Ok(DEFAULT_MMDS_ADDRESS);
        };
        let ip: std::net::Ipv4Addr = text.parse().map_err(|_| Error::MmdsAddress(text.clone()))?;
        match ip.octets() {
            octets @ [169, 254, 1..=254, _] => Ok(octets),
            _ => Err(Error::MmdsAddress(text.clone())),
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.network_interfaces.is_empty() {
            return Err(Error::MmdsNoInterface);
        }
        self.address().map(|_| ())
    }
}

/// `PUT /entropy`: a virtio-rng device fed by the host's `getrandom`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    #[serde(default, deserialize_with = "optional_object")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /balloon`: a virtio-balloon device that the guest inflates to give
/// memory back to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// The balloon's target size.
    pub amount_mib: u32,
    /// Offers VIRTIO_BALLOON_F_DEFLATE_ON_OOM: the guest may take pages back
    /// from the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// How often the guest's memory statistics are refreshed; 0 turns
    /// statistics off, for the life of the device.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// The guest hints free pages during runs the host starts
    /// (`/balloon/hinting/*`), which go back to the host.
    #[serde(default)]
    pub free_page_hinting: bool,
    /// The guest reports pages it has freed, which go back to the host.
    #[serde(default)]
    pub free_page_reporting: bool,
}

impl BalloonConfig {
    pub fn validate(&self, machine: &MachineConfig) -> Result<(), Error> {
        if u64::from(self.amount_mib) > machine.mem_size_mib {
            return Err(Error::BalloonTooBig(self.amount_mib, machine.mem_size_mib));
        }
        if machine.huge_pages() {
            return Err(Error::BalloonHugePages);
        }
        Ok(())
    }
}

/// `PATCH /balloon`: a new target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

/// `PATCH /balloon/hinting/start`: whether the guest's STOP ends the run by
/// itself (as Firecracker's default) or waits for `/balloon/hinting/stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintingStart {
    #[serde(default = "HintingStart::acknowledge_by_default")]
    pub acknowledge_on_stop: bool,
}

impl HintingStart {
    fn acknowledge_by_default() -> bool {
        true
    }
}

impl Default for HintingStart {
    fn default() -> Self {
        HintingStart {
            acknowledge_on_stop: true,
        }
    }
}

/// `PATCH /balloon/statistics`: a new polling interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    pub stats_polling_interval_s: u16,
}

/// `PUT /metrics`: where metrics are flushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: String,
}

/// A device configured before InstanceStart. The controller passes devices on
/// without looking inside, so a new kind of device is a new variant here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceConfig {
    /// `PUT /drives/{id}`, or a `drives` entry of the config file.
    Drive(DriveConfig),
    /// `PUT /vsock`, or the config file's `vsock`.
    Vsock(VsockConfig),
    /// `PUT /network-interfaces/{id}`, or a `network-interfaces` entry.
    Net(NetworkInterfaceConfig),
    /// `PUT /entropy`, or the config file's `entropy`.
    Entropy(EntropyConfig),
    /// `PUT /balloon`, or the config file's `balloon`.
    Balloon(BalloonConfig),
}

/// A change to a device of a running VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceUpdate {
    /// `PATCH /drives/{id}`.
    Drive(DriveUpdate),
    /// `PATCH /network-interfaces/{id}`.
    Net(NetworkInterfaceUpdate),
}

/// `PUT /function` (ember's extension): where and how long `POST /invocations` waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    #[serde(default = "FunctionConfig::default_port")]
    pub vsock_port: u32,
    #[serde(default = "FunctionConfig::default_timeout")]
    pub timeout_ms: u64,
    /// Invocations served at once; more are refused with 429.
    #[serde(default = "FunctionConfig::default_concurrency")]
    pub max_concurrent_invocations: usize,
}

impl FunctionConfig {
    fn default_port() -> u32 {
        1024
    }

    fn default_timeout() -> u64 {
        30_000
    }

    fn default_concurrency() -> usize {
        64
    }

    /// Each invocation holds a vsock connection, and the guest allows 1024.
    const MAX_CONCURRENCY: usize = 1000;

    pub fn validate(&self) -> Result<(), Error> {
        if self.timeout_ms == 0 {
            return Err(Error::Timeout);
        }
        if !(1..=Self::MAX_CONCURRENCY).contains(&self.max_concurrent_invocations) {
            return Err(Error::Concurrency {
                got: self.max_concurrent_invocations,
                max: Self::MAX_CONCURRENCY,
            });
        }
        Ok(())
    }
}

impl Default for FunctionConfig {
    fn default() -> Self {
        FunctionConfig {
            vsock_port: Self::default_port(),
            timeout_ms: Self::default_timeout(),
            max_concurrent_invocations: Self::default_concurrency(),
        }
    }
}

/// The whole VM in one document: `--config-file` input and `GET /vm/config`
/// output. Every key is always written, `null` or empty where unset, as
/// Firecracker writes it, so a document exported by either loads in both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VmConfig {
    #[serde(default, deserialize_with = "optional_object")]
    pub balloon: Option<BalloonConfig>,
    #[serde(default, deserialize_with = "objects")]
    pub drives: Vec<DriveConfig>,
    #[serde(default, deserialize_with = "optional_object")]
    pub boot_source: Option<BootSourceConfig>,
    #[serde(default)]
    pub cpu_config: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "optional_object")]
    pub logger: Option<LoggerConfig>,
    #[serde(default, deserialize_with = "optional_object")]
    pub machine_config: Option<MachineConfig>,
    /// Where metrics go, as `PUT /metrics`; not kept in snapshots.
    #[serde(default, deserialize_with = "optional_object")]
    pub metrics: Option<MetricsConfig>,
    #[serde(default, deserialize_with = "optional_object")]
    pub mmds_config: Option<MmdsConfig>,
    #[serde(default, deserialize_with = "objects")]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    #[serde(default, deserialize_with = "optional_object")]
    pub vsock: Option<VsockConfig>,
    #[serde(default, deserialize_with = "optional_object")]
    pub entropy: Option<EntropyConfig>,
    #[serde(default)]
    pub pmem: Vec<serde_json::Value>,
    #[serde(default)]
    pub memory_hotplug: Option<serde_json::Value>,
    /// ember's own section: the function `POST /invocations` calls.
    #[serde(default, deserialize_with = "optional_object")]
    pub function: Option<FunctionConfig>,
    /// ember's own section, in config files only: `{"enabled": true}` does
    /// what `--enable-pci` does. Not written back: the transport is the
    /// process's, as the flag is.
    #[serde(default, deserialize_with = "optional_object", skip_serializing)]
    pub pci: Option<PciConfig>,
    /// ember's own section, in config files only: a snapshot to load (the body
    /// of `PUT /snapshot/load`) instead of a machine to boot, so that a process
    /// restores at start without waiting for its API. Not written back.
    #[serde(default, deserialize_with = "optional_object", skip_serializing)]
    pub snapshot_load: Option<SnapshotLoadConfig>,
}

/// The config file's `pci` section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciConfig {
    /// Puts the virtio devices on PCI.
    pub enabled: bool,
}

impl VmConfig {
    /// A `--config-file` document, which must be a JSON object.
    pub fn from_json(text: &[u8]) -> Result<VmConfig, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_slice(text)?;
        object(value)
    }

    /// Refuses a document that names a drive or an interface twice: the
    /// API replaces a device on a second PUT, but a file that does so is a mistake.
    pub fn check_unique_ids(&self) -> Result<(), Error> {
        let first_repeat = |ids: Vec<&String>| {
            ids.iter()
                .enumerate()
                .find(|(i, id)| ids[..*i].contains(id))
                .map(|(_, id)| id.to_string())
        };
        if let Some(id) = first_repeat(self.drives.iter().map(|d| &d.drive_id).collect()) {
            return Err(Error::DuplicateId("drive", id));
        }
        if let Some(id) = first_repeat(
            self.network_interfaces
                .iter()
                .map(|n| &n.iface_id)
                .collect(),
        ) {
            return Err(Error::DuplicateId("network interface", id));
        }
        Ok(())
    }

    /// The first section present that ember cannot act on.
    /// The first section that describes the machine itself, which a snapshot
    /// brings along: a config file that loads one cannot have these.
    pub fn machine_section(&self) -> Option<&'static str> {
        [
            ("boot-source", self.boot_source.is_some()),
            ("machine-config", self.machine_config.is_some()),
            ("drives", !self.drives.is_empty()),
            ("network-interfaces", !self.network_interfaces.is_empty()),
            ("vsock", self.vsock.is_some()),
            ("entropy", self.entropy.is_some()),
            ("balloon", self.balloon.is_some()),
            ("mmds-config", self.mmds_config.is_some()),
            ("function", self.function.is_some()),
            ("pci", self.pci.is_some()),
        ]
        .into_iter()
        .find_map(|(name, used)| used.then_some(name))
    }

    pub fn unsupported_section(&self) -> Option<&'static str> {
        let present = |v: &Option<serde_json::Value>| v.as_ref().is_some_and(|v| !v.is_null());
        [
            ("cpu-config", present(&self.cpu_config)),
            ("pmem", !self.pmem.is_empty()),
            ("memory-hotplug", present(&self.memory_hotplug)),
        ]
        .into_iter()
        .find_map(|(name, used)| used.then_some(name))
    }
}

/// Instance and drive ids: what Firecracker accepts, 1 to 64 of `[a-zA-Z0-9_-]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<MachineConfig, String> {
        serde_json::from_str::<MachineConfigBody>(json)
            .map_err(|e| e.to_string())?
            .into_config()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn machine_config_accepts_firecrackers_shape() {
        let c = body(
            r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": true}"#,
        )
        .unwrap();
        assert_eq!(
            (c.vcpu_count, c.mem_size_mib, c.track_dirty_pages),
            (2, 256, true)
        );
        let c = body(
            r#"{"vcpu_count": 32, "mem_size_mib": 1, "cpu_template": "None", "huge_pages": "None"}"#,
        );
        assert!(c.is_ok());
    }

    #[test]
    fn machine_config_rejects_bad_values_with_a_reason() {
        assert!(body(r#"{"vcpu_count": 0, "mem_size_mib": 128}"#)
            .unwrap_err()
            .contains("vcpu_count"));
        assert!(body(r#"{"vcpu_count": 33, "mem_size_mib": 128}"#)
            .unwrap_err()
            .contains("between 1 and 32"));
        assert!(body(r#"{"vcpu_count": 300, "mem_size_mib": 128}"#)
            .unwrap_err()
            .contains("300"));
        assert!(body(r#"{"vcpu_count": 1, "mem_size_mib": 0}"#)
            .unwrap_err()
            .contains("mem_size_mib"));
        assert!(
            body(r#"{"vcpu_count": 2, "mem_size_mib": 128, "smt": true}"#)
                .unwrap_err()
                .contains("smt")
        );
        assert!(
            body(r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"}"#)
                .unwrap_err()
                .contains("T2")
        );
        assert!(
            body(r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"}"#)
                .unwrap_err()
                .contains("1G")
        );
        assert!(
            body(r#"{"vcpu_count": 1, "mem_size_mib": 129, "huge_pages": "2M"}"#)
                .unwrap_err()
                .contains("2 MiB huge pages")
        );
        assert!(body(r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}"#).is_ok());
        assert!(
            body(r#"{"vcpu_count": 1, "mem_size_mib": 128, "color": "red"}"#)
                .unwrap_err()
                .contains("color")
        );
        assert!(body(r#"{"vcpu_count": 1}"#)
            .unwrap_err()
            .contains("mem_size_mib"));
    }

    #[test]
    fn patch_changes_only_what_it_names() {
        let base = MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 256,
            ..Default::default()
        };
        let patched = base
            .updated(&MachineConfigUpdate {
                mem_size_mib: Some(512),
                ..Default::default()
            })
            .unwrap();
        assert_eq!((patched.vcpu_count, patched.mem_size_mib), (2, 512));
        assert!(base
            .updated(&MachineConfigUpdate {
                vcpu_count: Some(0),
                ..Default::default()
            })
            .is_err());
    }

    #[test]
    fn drives_need_a_path_and_refuse_what_ember_lacks() {
        let drive: DriveConfig = serde_json::from_str(
            r#"{"drive_id": "rootfs", "path_on_host": "a.img", "is_root_device": true, "is_read_only": false}"#,
        )
        .unwrap();
        assert_eq!(drive.validate(), Ok(()));
        assert_eq!(drive.cache_type, CacheType::Unsafe);
        let no_path = DriveConfig {
            path_on_host: None,
            ..drive.clone()
        };
        assert_eq!(no_path.validate(), Err(Error::DrivePath("rootfs".into())));
        let bad_id = DriveConfig {
            drive_id: "a/b".into(),
            ..drive
        };
        assert!(bad_id.validate().is_err());
    }

    #[test]
    fn rate_limiters_read_as_firecracker_writes_them() {
        let drive: DriveConfig = serde_json::from_str(
            r#"{"drive_id": "d", "path_on_host": "a.img", "is_root_device": false,
                "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 100},
                                 "ops": {"size": 10, "one_time_burst": 5, "refill_time": 1000}}}"#,
        )
        .unwrap();
        let limiter = drive.rate_limiter.unwrap();
        assert_eq!(limiter.bandwidth.unwrap().size, 1 << 20);
        assert_eq!(limiter.ops.unwrap().one_time_burst, Some(5));
        let null: EntropyConfig = serde_json::from_str(r#"{"rate_limiter": null}"#).unwrap();
        assert_eq!(null.rate_limiter, None);
        for bad in [
            r#"{"rate_limiter": {"bandwidth": {}}}"#,
            r#"{"rate_limiter": {"bandwidth": {"size": -1, "refill_time": 100}}}"#,
            r#"{"rate_limiter": {"bytes": {"size": 1, "refill_time": 100}}}"#,
        ] {
            assert!(serde_json::from_str::<EntropyConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_patch_replaces_the_buckets_it_names() {
        let bucket = |size| TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time: 100,
        };
        let both = RateLimiterConfig {
            bandwidth: Some(bucket(1000)),
            ops: Some(bucket(10)),
        };
        let new_ops = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(20)),
        };
        assert_eq!(
            RateLimiterConfig::patched(Some(both), &new_ops),
            Some(RateLimiterConfig {
                bandwidth: Some(bucket(1000)),
                ops: Some(bucket(20)),
            })
        );
        assert_eq!(RateLimiterConfig::patched(None, &new_ops), Some(new_ops));
        let lift_all = RateLimiterConfig {
            bandwidth: Some(bucket(0)),
            ops: Some(bucket(0)),
        };
        assert_eq!(RateLimiterConfig::patched(Some(both), &lift_all), None);
        assert_eq!(
            RateLimiterConfig::patched(Some(both), &RateLimiterConfig::default()),
            Some(both)
        );
    }

    #[test]
    fn config_file_sections_ember_lacks_are_named() {
        let config: VmConfig = serde_json::from_str(
            r#"{"boot-source": {"kernel_image_path": "k"}, "drives": [], "pmem": [{"id": "p"}]}"#,
        )
        .unwrap();
        assert_eq!(config.unsupported_section(), Some("pmem"));
        let config: VmConfig =
            serde_json::from_str(r#"{"boot-source": {"kernel_image_path": "k"}, "vsock": null}"#)
                .unwrap();
        assert_eq!(config.unsupported_section(), None);
        assert!(serde_json::from_str::<VmConfig>(r#"{"boot_source": {}}"#).is_err());
    }

    #[test]
    fn arrays_where_objects_belong_are_refused_at_every_depth() {
        let refused = |text: &str| {
            let e = VmConfig::from_json(text.as_bytes()).expect_err(text);
            assert!(
                e.to_string().contains("expected a JSON object"),
                "{text}: {e}"
            );
        };
        refused("[]");
        refused(r#"{"machine-config": [2, 256]}"#);
        refused(r#"{"entropy": {"rate_limiter": []}}"#);
        refused(r#"{"entropy": {"rate_limiter": {"ops": [1, 0, 1]}}}"#);
        refused(r#"{"drives": [["rootfs", true]]}"#);
        let load = serde_json::from_str::<SnapshotLoadConfig>(
            r#"{"snapshot_path": "s", "mem_backend": ["File", "m"]}"#,
        );
        assert!(load.is_err());
        let fine = VmConfig::from_json(br#"{"entropy": {"rate_limiter": null}, "vsock": null}"#);
        assert_eq!(fine.unwrap().entropy, Some(EntropyConfig::default()));
    }

    #[test]
    fn vsock_and_function_sections_validate() {
        let vsock: VsockConfig =
            serde_json::from_str(r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#).unwrap();
        assert_eq!(vsock.validate(), Ok(()));
        let low = VsockConfig {
            guest_cid: 2,
            ..vsock.clone()
        };
        assert_eq!(low.validate(), Err(Error::GuestCid(2)));
        assert!(serde_json::from_str::<VsockConfig>(r#"{"guest_cid": 3}"#).is_err());
        let function: FunctionConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(
            function,
            FunctionConfig {
                vsock_port: 1024,
                timeout_ms: 30_000,
                max_concurrent_invocations: 64,
            }
        );
        assert_eq!(
            FunctionConfig {
                max_concurrent_invocations: 0,
                ..function.clone()
            }
            .validate(),
            Err(Error::Concurrency { got: 0, max: 1000 })
        );
        assert_eq!(
            FunctionConfig {
                timeout_ms: 0,
                ..function
            }
            .validate(),
            Err(Error::Timeout)
        );
    }

    #[test]
    fn network_interfaces_validate_each_field_by_name() {
        let net: NetworkInterfaceConfig = serde_json::from_str(
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "AA:FC:00:00:00:01", "mtu": 9000}"#,
        )
        .unwrap();
        assert_eq!(net.validate(), Ok(()));
        assert_eq!(net.mac(), Some([0xaa, 0xfc, 0, 0, 0, 1]));
        assert_eq!(net.mtu(), Some(9000));
        let with = |f: &dyn Fn(&mut NetworkInterfaceConfig)| {
            let mut n = net.clone();
            f(&mut n);
            n.validate().unwrap_err().to_string()
        };
        for mac in [
            "01:00:00:00:00:01",
            "aa:fc:00:00:00",
            "aa:fc:00:00:00:01:02",
            "zz:00:00:00:00:00",
            "aafc00000001",
        ] {
            assert!(
                with(&|n| n.guest_mac = Some(mac.into())).contains("guest_mac"),
                "{mac}"
            );
        }
        assert!(
            with(&|n| n.host_dev_name = "a-name-that-is-too-long".into()).contains("host_dev_name")
        );
        assert!(with(&|n| n.host_dev_name = String::new()).contains("host_dev_name"));
        assert!(with(&|n| n.iface_id = "eth/0".into()).contains("iface_id"));
        assert!(with(&|n| n.mtu = Some(67)).contains("mtu"));
        assert!(serde_json::from_str::<NetworkInterfaceConfig>(r#"{"iface_id": "eth0"}"#).is_err());
    }

    #[test]
    fn mmds_config_needs_interfaces_and_a_link_local_address() {
        let config: MmdsConfig =
            serde_json::from_str(r#"{"network_interfaces": ["eth0"]}"#).unwrap();
        assert_eq!(config.version, MmdsVersion::V1);
        assert_eq!(config.address(), Ok(DEFAULT_MMDS_ADDRESS));
        let at = |ip: &str| MmdsConfig {
            ipv4_address: Some(ip.into()),
            ..config.clone()
        };
        assert_eq!(at("169.254.170.2").address(), Ok([169, 254, 170, 2]));
        for bad in ["10.0.0.1", "169.254.0.1", "169.254.255.1", "not an ip"] {
            assert_eq!(at(bad).validate(), Err(Error::MmdsAddress(bad.into())));
        }
        let none = MmdsConfig {
            network_interfaces: vec![],
            ..config
        };
        assert_eq!(none.validate(), Err(Error::MmdsNoInterface));
    }

    #[test]
    fn ids_follow_firecrackers_rules() {
        assert!(is_valid_id("fn-42_a"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(!is_valid_id("a b"));
    }
}

/// `snapshot_type` of `PUT /snapshot/create`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    #[default]
    Full,
    /// Only the pages written since the last snapshot (needs `track_dirty_pages`).
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateConfig {
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    pub snapshot_path: String,
    pub mem_file_path: String,
}

impl SnapshotCreateConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.snapshot_path.is_empty() {
            return Err(Error::EmptyPath("snapshot_path"));
        }
        if self.mem_file_path.is_empty() {
            return Err(Error::EmptyPath("mem_file_path"));
        }
        Ok(())
    }
}

/// Where a restored guest's memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// Mapped privately from the memory file.
    File,
    /// Served by a page-fault handler over userfaultfd.
    Uffd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    pub backend_type: MemBackendType,
    pub backend_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadConfig {
    pub snapshot_path: String,
    #[serde(default, deserialize_with = "optional_object")]
    pub mem_backend: Option<MemBackend>,
    /// Deprecated by Firecracker in favour of `mem_backend`; still accepted.
    #[serde(default)]
    pub mem_file_path: Option<String>,
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Firecracker's deprecated name for `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    #[serde(default)]
    pub resume_vm: bool,
    #[serde(default, deserialize_with = "objects")]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(default, deserialize_with = "optional_object")]
    pub vsock_override: Option<VsockOverride>,
    #[serde(default)]
    pub clock_realtime: bool,
}

impl SnapshotLoadConfig {
    /// The memory backend, whichever way the request spelled it.
    pub fn backend(&self) -> Result<MemBackend, Error> {
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(_), Some(_)) => Err(Error::TwoMemBackends),
            (None, None) => Err(Error::NoMemBackend),
            (Some(backend), None) => Ok(backend.clone()),
            (None, Some(path)) => Ok(MemBackend {
                backend_type: MemBackendType::File,
                backend_path: path.clone(),
            }),
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.snapshot_path.is_empty() {
            return Err(Error::EmptyPath("snapshot_path"));
        }
        if self.backend()?.backend_path.is_empty() {
            return Err(Error::EmptyPath("backend_path"));
        }
        for (i, o) in self.network_overrides.iter().enumerate() {
            check_host_dev_name(&o.iface_id, &o.host_dev_name)?;
            if self.network_overrides[..i]
                .iter()
                .any(|earlier| earlier.iface_id == o.iface_id)
            {
                return Err(Error::DuplicateOverride(o.iface_id.clone()));
            }
        }
        if self
            .vsock_override
            .as_ref()
            .is_some_and(|v| v.uds_path.is_empty())
        {
            return Err(Error::UdsPath);
        }
        Ok(())
    }
}
