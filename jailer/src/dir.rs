//! Directories held open by descriptor, and every root-side file operation on
//! their entries, one path component at a time, never following a symbolic link.
//!
//! The jail's root belongs to the jailed user, so anything under it may be
//! swapped for a symbolic link at any moment by a process of that user. A path
//! resolved again later (`root/dev/net`) is that process's to choose; an entry of
//! a directory this process holds open, opened with `O_NOFOLLOW`, is not: a
//! symbolic link there makes the call fail (or, for removal, is what goes).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// An open directory and the path it was opened at (for messages only: no
/// operation here resolves it again).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// One component: no separator, not `.` or `..`, not empty.
fn component(name: &OsStr) -> io::Result<CString> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    cstr(name)
}

/// How deep [`Dir::remove_tree`] goes: every level holds a descriptor, and a
/// tenant may nest directories without end.
const MAX_DEPTH: usize = 64;

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

impl AsRawFd for Dir {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Dir {
    /// Opens the directory at `path`, whose last component must not be a
    /// symbolic link (callers pass canonical paths of the host's own directories).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c_path = cstr(path.as_os_str())?;
        // SAFETY: a NUL-terminated path that outlives the call.
        let fd = check(unsafe { libc::open(c_path.as_ptr(), DIR_FLAGS) })?;
        Ok(Dir {
            // SAFETY: open just returned this descriptor, owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where entry `name` is, for messages.
    pub fn join(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.path.join(name.as_ref())
    }

    /// Opens the subdirectory `name`; a symbolic link fails (`ELOOP`/`ENOTDIR`).
    pub fn open_dir(&self, name: impl AsRef<OsStr>) -> io::Result<Dir> {
        let name = name.as_ref();
        let c_name = component(name)?;
        // SAFETY: a directory descriptor and a NUL-terminated name, both alive.
        let fd = check(unsafe { libc::openat(self.fd.as_raw_fd(), c_name.as_ptr(), DIR_FLAGS) })?;
        Ok(Dir {
            // SAFETY: openat just returned this descriptor, owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: self.join(name),
        })
    }

    /// Makes subdirectory `name` with `mode` and opens it, or opens the one that
    /// is there; also says whether it was made.
    pub fn make_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<(Dir, bool)> {
        let name = name.as_ref();
        let c_name = component(name)?;
        // SAFETY: a directory descriptor and a NUL-terminated name, both alive.
        let made = match check(unsafe {
            libc::mkdirat(self.fd.as_raw_fd(), c_name.as_ptr(), mode as libc::mode_t)
        }) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        Ok((self.open_dir(name)?, made))
    }

    /// Creates file `name` for writing with `mode`; fails if anything, a
    /// symbolic link included, is there already.
    pub fn create_file(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        let c_name = component(name.as_ref())?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a directory descriptor and a NUL-terminated name, both alive.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c_name.as_ptr(),
                flags,
                mode as libc::c_uint,
            )
        })?;
        // SAFETY: openat just returned this descriptor, owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Hard-links the open `file` as entry `name` (`AT_EMPTY_PATH`: the file
    /// checked is the file linked, whatever happens to its path meanwhile).
    pub fn link(&self, file: &File, name: impl AsRef<OsStr>) -> io::Result<()> {
        let c_name = component(name.as_ref())?;
        // SAFETY: two open descriptors and NUL-terminated names, all alive.
        check(unsafe {
            libc::linkat(
                file.as_raw_fd(),
                c"".as_ptr(),
                self.fd.as_raw_fd(),
                c_name.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        })?;
        Ok(())
    }

    /// Makes character device `name` with `mode` and device number `rdev`.
    pub fn make_char_device(&self, name: &str, mode: u32, rdev: u64) -> io::Result<()> {
        let c_name = component(OsStr::new(name))?;
        // SAFETY: a directory descriptor and a NUL-terminated name, both alive.
        check(unsafe {
            libc::mknodat(
                self.fd.as_raw_fd(),
                c_name.as_ptr(),
                libc::S_IFCHR | mode as libc::mode_t,
                rdev,
            )
        })?;
        Ok(())
    }

    /// Gives entry `name` (a symbolic link itself, never what it points to) to
    /// `uid:gid`.
    pub fn chown_entry(&self, name: &str, uid: u32, gid: u32) -> io::Result<()> {
        let c_name = component(OsStr::new(name))?;
        // SAFETY: a directory descriptor and a NUL-terminated name, both alive.
        check(unsafe {
            libc::fchownat(
                self.fd.as_raw_fd(),
                c_name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(())
    }

    /// Sets this directory's owner and mode, through its descriptor.
    pub fn set_owner_and_mode(&self, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        // SAFETY: plain syscalls on a descriptor this value owns.
        unsafe {
            check(libc::fchown(self.fd.as_raw_fd(), uid, gid))?;
            check(libc::fchmod(self.fd.as_raw_fd(), mode as libc::mode_t))?;
        }
        Ok(())
    }

    /// The names of the entries that are symbolic links.
    pub fn symlinks(&self) -> io::Result<Vec<OsString>> {
        let mut found = Vec::new();
        for (name, kind) in self.entries()? {
            if kind == libc::DT_LNK || kind == libc::DT_UNKNOWN && self.is_symlink(&name)? {
                found.push(name);
            }
        }
        Ok(found)
    }

    fn is_symlink(&self, name: &OsStr) -> io::Result<bool> {
        Ok(self.stat(name)?.st_mode & libc::S_IFMT == libc::S_IFLNK)
    }

    /// Whether there is an entry `name` (of any kind).
    pub fn contains(&self, name: impl AsRef<OsStr>) -> bool {
        self.stat(name.as_ref()).is_ok()
    }

    /// This directory's status.
    fn own_stat(&self) -> io::Result<libc::stat> {
        // SAFETY: an all-zero stat is a valid out-buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: an open descriptor and a stat buffer, both alive for the call.
        check(unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) })?;
        Ok(st)
    }

    /// Whether this directory is root's and writable by nobody else, so only
    /// root can change what its entries are.
    pub fn is_roots_alone(&self) -> io::Result<bool> {
        let st = self.own_stat()?;
        Ok(st.st_uid == 0 && st.st_mode & 0o022 == 0)
    }

    /// Entry `name`'s own status (a symbolic link's, not its target's).
    fn stat(&self, name: &OsStr) -> io::Result<libc::stat> {
        let c_name = component(name)?;
        // SAFETY: an all-zero stat is a valid out-buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a directory descriptor, a NUL-terminated name and a stat
        // buffer, all alive for the call.
        check(unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c_name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(st)
    }

    /// Every entry but `.` and `..`, with its `d_type`.
    fn entries(&self) -> io::Result<Vec<(OsString, u8)>> {
        // readdir needs a stream of its own: a fresh descriptor for `.`.
        // SAFETY: a directory descriptor and a NUL-terminated name, both alive.
        let fd = check(unsafe { libc::openat(self.fd.as_raw_fd(), c".".as_ptr(), DIR_FLAGS) })?;
        // SAFETY: `fd` is an open directory descriptor that the stream now owns.
        let stream = unsafe { libc::fdopendir(fd) };
        if stream.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `fd` is still ours to close.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let mut entries = Vec::new();
        loop {
            // SAFETY: `stream` is a live directory stream used by this thread only.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                break;
            }
            // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated
            // and which stays valid until the next readdir on this stream.
            let (name, kind) =
                unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()), (*entry).d_type) };
            if name != c"." && name != c".." {
                entries.push((OsStr::from_bytes(name.to_bytes()).to_owned(), kind));
            }
        }
        // SAFETY: closes the stream (and its descriptor) once, after its last use.
        unsafe { libc::closedir(stream) };
        Ok(entries)
    }

    /// Removes entry `name` and, if it is a directory, everything in it. A
    /// symbolic link at any depth is removed itself, never followed; a mount
    /// point (another device) and what lies deeper than [`MAX_DEPTH`] stay.
    pub fn remove_tree(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let device = self.own_stat()?.st_dev;
        self.remove_tree_below(name.as_ref(), device, MAX_DEPTH)
    }

    fn remove_tree_below(&self, name: &OsStr, device: libc::dev_t, depth: usize) -> io::Result<()> {
        let c_name = component(name)?;
        match self.open_dir(name) {
            Ok(dir) => {
                if dir.own_stat()?.st_dev != device || depth == 0 {
                    return Err(io::Error::from_raw_os_error(libc::EXDEV));
                }
                for (entry, _) in dir.entries()? {
                    // Best effort: what cannot go stays, and so does its directory.
                    let _ = dir.remove_tree_below(&entry, device, depth - 1);
                }
                self.unlink(&c_name, libc::AT_REMOVEDIR)
            }
            // Not a directory, or a symbolic link: the entry itself goes.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
                self.unlink(&c_name, 0)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes entry `name`, which must be a file or symbolic link.
    pub fn remove_file(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        self.unlink(&component(name.as_ref())?, 0)
    }

    fn unlink(&self, name: &CStr, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: a directory descriptor and a NUL-terminated name, both alive.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), flags) })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn symbolic_links_are_never_followed() {
        let t = TempDir::new().expect("a temporary directory");
        let host = t.as_path().join("host");
        std::fs::create_dir_all(host.join("net")).unwrap();
        std::fs::write(host.join("net/tun"), b"keep").unwrap();
        std::fs::write(host.join("file"), b"keep").unwrap();
        let jail = t.as_path().join("jail");
        std::fs::create_dir(&jail).unwrap();
        symlink(&host, jail.join("dev")).unwrap();
        symlink(host.join("file"), jail.join("pid")).unwrap();
        let dir = Dir::open(&jail).unwrap();

        let e = dir.open_dir("dev").unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
            "{e}"
        );
        assert!(dir.make_dir("dev", 0o700).is_err());
        let e = dir.create_file("pid", 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let mut links = dir.symlinks().unwrap();
        links.sort();
        assert_eq!(links, [OsString::from("dev"), OsString::from("pid")]);
        assert!(dir.open_dir("../jail").is_err(), "one component only");

        dir.remove_tree("dev").unwrap();
        dir.remove_tree("pid").unwrap();
        assert_eq!(std::fs::read(host.join("net/tun")).unwrap(), b"keep");
        assert_eq!(std::fs::read(host.join("file")).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(&jail).unwrap().count(), 0);
    }

    #[test]
    fn a_tree_goes_with_its_links_but_not_their_targets() {
        let t = TempDir::new().expect("a temporary directory");
        let outside = t.as_path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let tree = t.as_path().join("top/tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/file"), b"x").unwrap();
        symlink(&outside, tree.join("a/escape")).unwrap();
        let top = Dir::open(&t.as_path().join("top")).unwrap();
        top.remove_tree("tree").unwrap();
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
    }
}
