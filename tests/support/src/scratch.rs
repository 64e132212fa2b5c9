//! Scratch directories, removed when dropped: vmm-sys-util's `TempDir`, as
//! ember's unit tests use it, with the file helpers the tests share.

use std::path::{Path, PathBuf};

pub struct TempDir(vmm_sys_util::tempdir::TempDir);

impl TempDir {
    /// A fresh directory under the system's temporary directory, named after `tag`.
    pub fn new(tag: &str) -> Self {
        let prefix = std::env::temp_dir().join(format!("ember-test-{tag}-"));
        let prefix = prefix.to_str().expect("a UTF-8 temporary directory");
        TempDir(
            vmm_sys_util::tempdir::TempDir::new_with_prefix(prefix)
                .expect("create a temporary directory"),
        )
    }

    pub fn as_path(&self) -> &Path {
        self.0.as_path()
    }

    /// `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.as_path().join(name)
    }

    /// A disk image of `sectors` 512-byte sectors starting with `text`.
    pub fn disk(&self, name: &str, sectors: usize, text: &[u8]) -> PathBuf {
        let mut bytes = vec![0u8; sectors * 512];
        bytes[..text.len()].copy_from_slice(text);
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("write disk image");
        path
    }
}
