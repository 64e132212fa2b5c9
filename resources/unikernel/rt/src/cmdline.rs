//! Kernel command-line parsing: plain tokens, Linux's `virtio_mmio.device=`
//! announcements (the only way a microVM without PCI tells the guest its devices)
//! and Linux's static `ip=` configuration.

use core::fmt;
use core::net::Ipv4Addr;

/// A virtio-mmio device announced as `virtio_mmio.device=<size>@<base>:<irq>[:<id>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

impl MmioDevice {
    /// The window's address for a pointer, if the identity map (the first 4 GiB)
    /// holds it; a guest can drive no other.
    pub fn mapped_base(&self) -> Option<usize> {
        usize::try_from(self.base)
            .ok()
            .filter(|_| self.base < 1 << 32)
    }
}

const VIRTIO_MMIO_PREFIX: &[u8] = b"virtio_mmio.device=";

/// Whitespace-separated tokens.
pub fn tokens(cmdline: &[u8]) -> impl Iterator<Item = &[u8]> {
    cmdline
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
}

/// Whether `token` appears as a whole token.
pub fn has_token(cmdline: &[u8], token: &[u8]) -> bool {
    tokens(cmdline).any(|t| t == token)
}

/// The value of the first `<key><value>` token (`key` includes the `=`).
pub fn value<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    tokens(cmdline).find_map(|t| t.strip_prefix(key))
}

/// Every `virtio_mmio.device=` token in command-line order: the device, or the
/// malformed value.
pub fn virtio_mmio_devices(cmdline: &[u8]) -> impl Iterator<Item = Result<MmioDevice, &[u8]>> {
    tokens(cmdline)
        .filter_map(|t| t.strip_prefix(VIRTIO_MMIO_PREFIX))
        .map(|value| parse_mmio_device(value).ok_or(value))
}

/// The network configuration of Linux's `ip=` parameter, static form only:
/// `ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>`,
/// e.g. `ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off:8.8.8.8`. The server,
/// hostname and device fields and any after `dns0` mean nothing here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpConfig {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Option<Ipv4Addr>,
}

impl IpConfig {
    /// Whether `addr` is in the client's subnet.
    pub fn on_link(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        (u32::from(addr) ^ u32::from(self.address)) & mask == 0
    }
}

/// An `ip=` value this parser does not take: what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
pub struct BadIpConfig(pub &'static str);

impl fmt::Display for BadIpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ip=: {}", self.0)
    }
}

/// The first `ip=` token's configuration; `None` without one, or for `ip=off`
/// and `ip=none`. Autoconfiguration (DHCP and the like) is refused.
pub fn ip_config(cmdline: &[u8]) -> Result<Option<IpConfig>, BadIpConfig> {
    let Some(value) = value(cmdline, b"ip=") else {
        return Ok(None);
    };
    if matches!(value, b"off" | b"none") {
        return Ok(None);
    }
    if !value.contains(&b':') {
        return Err(BadIpConfig(
            "only static configuration (autoconf off) is supported",
        ));
    }
    let mut fields = value.split(|&b| b == b':');
    let mut field = || fields.next().unwrap_or_default();
    let (client, _server, gateway, netmask) = (field(), field(), field(), field());
    let (_hostname, _device, autoconf, dns) = (field(), field(), field(), field());
    if !matches!(autoconf, b"" | b"off" | b"none") {
        return Err(BadIpConfig(
            "only static configuration (autoconf off) is supported",
        ));
    }
    let mask = parse_ipv4(netmask).ok_or(BadIpConfig("bad netmask"))?;
    let mask = u32::from(mask);
    if mask.leading_ones() + mask.trailing_zeros() != 32 {
        return Err(BadIpConfig("netmask is not contiguous"));
    }
    let optional = |field: &[u8], what| match field {
        b"" => Ok(None),
        _ => parse_ipv4(field)
            .map(|ip| (!ip.is_unspecified()).then_some(ip))
            .ok_or(BadIpConfig(what)),
    };
    Ok(Some(IpConfig {
        address: parse_ipv4(client).ok_or(BadIpConfig("bad client address"))?,
        prefix_len: u8::try_from(mask.leading_ones()).unwrap_or(32),
        gateway: optional(gateway, "bad gateway")?,
        dns: optional(dns, "bad dns0")?,
    }))
}

fn parse_ipv4(s: &[u8]) -> Option<Ipv4Addr> {
    core::str::from_utf8(s).ok()?.parse().ok()
}

fn parse_mmio_device(value: &[u8]) -> Option<MmioDevice> {
    let (size, rest) = split_once(value, b'@')?;
    let (base, rest) = split_once(rest, b':')?;
    // An optional `:<platform device id>` follows the IRQ; it means nothing here.
    let irq = split_once(rest, b':').map_or(rest, |(irq, _)| irq);
    Some(MmioDevice {
        size: parse_size(size)?,
        base: parse_number(base)?,
        irq: u32::try_from(parse_number(irq)?).ok()?,
    })
}

fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = s.iter().position(|&b| b == sep)?;
    Some((&s[..at], &s[at + 1..]))
}

/// A number with Linux `memparse` suffixes K, M, G (binary multiples).
fn parse_size(s: &[u8]) -> Option<u64> {
    let (digits, shift) = match s.last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_number(digits)?.checked_mul(1 << shift)
}

/// Decimal, or hexadecimal with a `0x` prefix.
pub fn parse_number(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', hex @ ..] => (hex, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        let digit = char::from(b).to_digit(radix)?;
        acc.checked_mul(u64::from(radix))?
            .checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tokens() {
        let cmdline = b"console=ttyS0  ember.echo\treboot=k";
        assert!(has_token(cmdline, b"ember.echo"));
        assert!(!has_token(cmdline, b"ember"));
        assert!(!has_token(b"", b"ember.echo"));
        assert_eq!(value(cmdline, b"reboot="), Some(&b"k"[..]));
        assert_eq!(value(cmdline, b"ember.port="), None);
    }

    #[test]
    fn parses_virtio_mmio_devices() {
        let cmdline = b"virtio_mmio.device=4K@0xd0001000:5 root=/dev/vda \
            virtio_mmio.device=512@0xfeb00e00:12:3 virtio_mmio.device=4K@zz:1";
        let devices: Vec<_> = virtio_mmio_devices(cmdline).collect();
        assert_eq!(
            devices,
            [
                Ok(MmioDevice {
                    base: 0xd000_1000,
                    size: 4096,
                    irq: 5
                }),
                Ok(MmioDevice {
                    base: 0xfeb0_0e00,
                    size: 512,
                    irq: 12
                }),
                Err(&b"4K@zz:1"[..]),
            ]
        );
    }

    fn ip(cmdline: &str) -> Result<Option<IpConfig>, BadIpConfig> {
        ip_config(cmdline.as_bytes())
    }

    #[test]
    fn parses_static_ip_configuration() {
        let full =
            ip("console=ttyS0 ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off:10.0.0.53");
        assert_eq!(
            full,
            Ok(Some(IpConfig {
                address: Ipv4Addr::new(172, 16, 0, 2),
                prefix_len: 30,
                gateway: Some(Ipv4Addr::new(172, 16, 0, 1)),
                dns: Some(Ipv4Addr::new(10, 0, 0, 53)),
            }))
        );
        let bare = ip("ip=10.1.2.3:::255.0.0.0::eth0:off").unwrap().unwrap();
        assert_eq!((bare.prefix_len, bare.gateway, bare.dns), (8, None, None));
        // Linux's full form: server, hostname, dns1 and NTP server mean nothing here.
        let linux =
            ip("ip=10.1.2.3:10.1.2.9:0.0.0.0:255.255.255.0:fn:eth0:none:1.1.1.1:8.8.8.8:9.9.9.9");
        let linux = linux.unwrap().unwrap();
        assert_eq!(
            (linux.gateway, linux.dns),
            (None, Some(Ipv4Addr::new(1, 1, 1, 1)))
        );
        assert_eq!(ip("ip=10.1.2.3:::0.0.0.0").unwrap().unwrap().prefix_len, 0);
        for none in ["", "ip=off", "ip=none root=/dev/vda"] {
            assert_eq!(ip(none), Ok(None));
        }
    }

    #[test]
    fn refuses_ip_configurations_it_cannot_apply() {
        const AUTOCONF: &str = "only static configuration (autoconf off) is supported";
        for (cmdline, what) in [
            ("ip=dhcp", AUTOCONF),
            ("ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:dhcp", AUTOCONF),
            ("ip=10.0.0.2::10.0.0.1:::eth0:off", "bad netmask"),
            (
                "ip=10.0.0.2::10.0.0.1:255.0.255.0::eth0:off",
                "netmask is not contiguous",
            ),
            (
                "ip=10.0.0.256::10.0.0.1:255.255.255.0::eth0:off",
                "bad client address",
            ),
            (
                "ip=::10.0.0.1:255.255.255.0::eth0:off",
                "bad client address",
            ),
            ("ip=10.0.0.2::gw:255.255.255.0::eth0:off", "bad gateway"),
            ("ip=10.0.0.2:::255.255.255.0::eth0:off:8.8.8", "bad dns0"),
        ] {
            assert_eq!(ip(cmdline), Err(BadIpConfig(what)), "{cmdline}");
        }
        assert_eq!(BadIpConfig("bad netmask").to_string(), "ip=: bad netmask");
    }

    #[test]
    fn tells_addresses_on_link() {
        let config = ip("ip=192.168.7.9:::255.255.255.0").unwrap().unwrap();
        assert!(config.on_link(Ipv4Addr::new(192, 168, 7, 1)));
        assert!(!config.on_link(Ipv4Addr::new(192, 168, 8, 1)));
        let everything = IpConfig {
            prefix_len: 0,
            ..config
        };
        assert!(everything.on_link(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn parses_numbers() {
        assert_eq!(parse_size(b"1M"), Some(1 << 20));
        assert_eq!(parse_size(b"0x10"), Some(16));
        assert_eq!(parse_size(b"K"), None);
        assert_eq!(parse_number(b"0x"), None);
        assert_eq!(parse_number(b"99999999999999999999999"), None);
    }
}
