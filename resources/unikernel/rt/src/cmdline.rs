//! Kernel command-line parsing: plain tokens and Linux's `virtio_mmio.device=`
//! announcements, the only way a microVM without PCI tells the guest its devices.

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

    #[test]
    fn parses_numbers() {
        assert_eq!(parse_size(b"1M"), Some(1 << 20));
        assert_eq!(parse_size(b"0x10"), Some(16));
        assert_eq!(parse_size(b"K"), None);
        assert_eq!(parse_number(b"0x"), None);
        assert_eq!(parse_number(b"99999999999999999999999"), None);
    }
}
