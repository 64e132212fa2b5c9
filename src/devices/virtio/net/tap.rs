//! A host TAP device (`/dev/net/tun`) in the mode virtio-net needs: Ethernet
//! frames without packet information, each led by a virtio-net header.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

use super::VNET_HDR_LEN;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Offloads the TAP may use for frames it hands ember (`TUNSETOFFLOAD`).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_UFO: u32 = 0x10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No interface of that name in ember's network namespace: ember does
    /// not create TAPs, the platform does.
    #[error("TAP device '{0}' does not exist in ember's network namespace")]
    NoSuchTap(String),
    /// Another process (or another interface of this VM) holds the TAP.
    #[error("TAP device '{0}' is busy: another process has it open")]
    Busy(String),
    /// A TAP made for another user, and ember lacks CAP_NET_ADMIN (as in a jail).
    #[error("ember (uid {uid}) may not attach to TAP device '{name}': make it for ember's user (`ip tuntap add {name} mode tap user {uid}`) or give ember CAP_NET_ADMIN")]
    NotPermitted { name: String, uid: u32 },
    /// Any other failure to open or set up the TAP.
    #[error("cannot open TAP device '{name}': {source}")]
    Open {
        name: String,
        source: std::io::Error,
    },
}

/// `struct ifreq` with the flags member of its union, as TUNSETIFF reads it.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

/// An open TAP, non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing TAP `name`.
    pub fn open(name: &str) -> Result<Tap, Error> {
        let open_err = |source| Error::Open {
            name: name.to_string(),
            source,
        };
        let c_name = CString::new(name).map_err(|_| Error::NoSuchTap(name.to_string()))?;
        // SAFETY: `c_name` is a NUL-terminated string that outlives the call.
        if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
            return Err(Error::NoSuchTap(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(open_err)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _union_rest: [0; 22],
        };
        // The config checks the length; a longer name would not exist anyway.
        let bytes = name.as_bytes();
        let len = bytes.len().min(libc::IFNAMSIZ - 1);
        req.name[..len].copy_from_slice(&bytes[..len]);
        // SAFETY: TUNSETIFF reads and writes an `ifreq`, which `req` is laid out as.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EBUSY) => Error::Busy(name.to_string()),
                Some(libc::EPERM) => Error::NotPermitted {
                    name: name.to_string(),
                    // SAFETY: getuid has no preconditions.
                    uid: unsafe { libc::getuid() },
                },
                _ => open_err(e),
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        let hdr_len = libc::c_int::try_from(VNET_HDR_LEN).unwrap_or(libc::c_int::MAX);
        // SAFETY: TUNSETVNETHDRSZ reads an int from the pointer.
        if unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(open_err(std::io::Error::last_os_error()));
        }
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Lets the TAP hand over frames with the offloads in `flags` (`TUN_F_*`);
    /// UFO is dropped if this kernel refuses it.
    pub fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        let set = |flags: u32| {
            // SAFETY: TUNSETOFFLOAD takes its argument by value.
            if unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    TUNSETOFFLOAD,
                    libc::c_ulong::from(flags),
                )
            } < 0
            {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        set(flags).or_else(|e| {
            if flags & TUN_F_UFO != 0 {
                set(flags & !TUN_F_UFO)
            } else {
                Err(e)
            }
        })
    }

    /// Reads one frame (with its header); `WouldBlock` when there is none.
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (with its header).
    pub fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(frame)
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// TAPs opened while the VM was configured (to check them), kept for the
/// devices InstanceStart makes: attaching to a TAP takes about 100 µs, and
/// closing one waits for the kernel to let go of it, so each is opened once.
#[derive(Debug, Clone, Default)]
pub struct OpenTaps(Arc<Mutex<Vec<Tap>>>);

impl OpenTaps {
    /// Keeps `tap`, in place of any other tap of the same name.
    pub fn keep(&self, tap: Tap) {
        if let Ok(mut taps) = self.0.lock() {
            taps.retain(|t| t.name != tap.name);
            taps.push(tap);
        }
    }

    /// Closes the tap named `name`, if one is kept.
    pub fn close(&self, name: &str) {
        if let Ok(mut taps) = self.0.lock() {
            taps.retain(|t| t.name != name);
        }
    }

    /// The tap named `name`, kept open or opened now.
    pub fn take_or_open(&self, name: &str) -> Result<Tap, Error> {
        let kept = self.0.lock().ok().and_then(|mut taps| {
            let at = taps.iter().position(|t| t.name == name)?;
            Some(taps.swap_remove(at))
        });
        kept.map_or_else(|| Tap::open(name), Ok)
    }
}
