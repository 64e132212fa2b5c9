//! The host's pool of 2 MiB huge pages, resized for a test and put back
//! afterwards.

use std::path::Path;

const POOL: &str = "/proc/sys/vm/nr_hugepages";
const FREE: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

fn read(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The pool as the test found it, restored on drop.
pub struct HugePagePool {
    original: u64,
}

impl HugePagePool {
    /// Takes charge of the pool (root only).
    pub fn take() -> Self {
        crate::require_root();
        assert!(
            Path::new(FREE).exists(),
            "this host has no 2 MiB huge pages"
        );
        HugePagePool {
            original: read(POOL),
        }
    }

    /// Resizes the pool so that exactly `free` pages are free.
    pub fn set_free(&self, free: u64) {
        let in_use = read(POOL) - read(FREE);
        std::fs::write(POOL, (in_use + free).to_string()).expect("resize the huge page pool");
        assert_eq!(
            read(FREE),
            free,
            "the kernel could not give {free} free huge pages"
        );
    }
}

impl Drop for HugePagePool {
    fn drop(&mut self) {
        let _ = std::fs::write(POOL, self.original.to_string());
    }
}

/// The huge-page memory `pid` has mapped and touched, in KiB.
pub fn hugetlb_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("HugetlbPages:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("a HugetlbPages line")
}
