//! Files written aside and renamed into place once complete, so a failure
//! never leaves a torn file where a good one was.
//!
//! The file aside gets a random name in the destination's directory and is
//! created with `O_EXCL | O_NOFOLLOW`, mode 0600: nothing planted there
//! beforehand (a file, or a symbolic link to one elsewhere) can own it or
//! redirect it, and no other user can read what is written. The rename then
//! replaces whatever is at the destination, a symbolic link included, without
//! following it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Random names tried before giving up: only a directory being filled with
/// names at the same moment could use more than one.
const ATTEMPTS: usize = 8;

/// A file being written aside; removed unless [`Aside::commit`]ted.
#[derive(Debug)]
pub struct Aside {
    file: File,
    temp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

fn random_suffix() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if usize::try_from(n).ok() != Some(bytes.len()) {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(bytes))
}

impl Aside {
    /// Creates a fresh file, readable and writable, beside `dest`.
    pub fn create(dest: &Path) -> io::Result<Aside> {
        let name = dest
            .file_name()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let dir = dest.parent().unwrap_or(Path::new(""));
        let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
        for _ in 0..ATTEMPTS {
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".{:016x}.tmp", random_suffix()?));
            let temp = dir.join(temp_name);
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temp)
            {
                Ok(file) => {
                    return Ok(Aside {
                        file,
                        temp,
                        dest: dest.to_owned(),
                        committed: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Renames the file into place.
    pub fn commit(mut self) -> io::Result<()> {
        std::fs::rename(&self.temp, &self.dest)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Aside {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{symlink, MetadataExt};

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-aside-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_planted_link_at_the_destination_is_replaced_not_followed() {
        let dir = temp_dir("link");
        let target = dir.join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        let dest = dir.join("mem");
        symlink(&target, &dest).unwrap();
        let mut aside = Aside::create(&dest).unwrap();
        aside.file.write_all(b"guest memory").unwrap();
        aside.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        let meta = std::fs::symlink_metadata(&dest).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&dest).unwrap(), b"guest memory");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            2,
            "nothing else left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_abandoned_file_goes_and_the_destination_stays() {
        let dir = temp_dir("drop");
        let dest = dir.join("state");
        std::fs::write(&dest, b"good snapshot").unwrap();
        let aside = Aside::create(&dest).unwrap();
        (&aside.file).write_all(b"torn").unwrap();
        drop(aside);
        assert_eq!(std::fs::read(&dest).unwrap(), b"good snapshot");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
