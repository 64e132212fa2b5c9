//! Where the binaries under test and the guest artifacts are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The workspace's root, where `resources/` is.
pub fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The directory cargo put this test or benchmark's binaries in
/// (`target/<profile>`): the test executable itself runs from its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable runs from target/<profile>/deps")
        .to_path_buf()
}

/// A binary built beside the tests, which `cargo test`/`cargo bench` of the
/// workspace (or `cargo build --workspace` of the same profile) builds.
pub fn built_binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace (cargo build --release --workspace)",
        path.display()
    );
    path
}

/// The `ember` binary under test.
pub fn ember_bin() -> PathBuf {
    built_binary("ember")
}

/// `ember-snapshot`, built beside `ember`.
pub fn ember_snapshot_bin() -> PathBuf {
    built_binary("ember-snapshot")
}

/// `ember-jailer`, built beside `ember`.
pub fn jailer_bin() -> PathBuf {
    built_binary("ember-jailer")
}

/// The statically linked ember the jail needs (nothing else is in the chroot).
pub fn static_ember() -> PathBuf {
    let path = profile_dir()
        .parent()
        .map(|target| target.join("x86_64-unknown-linux-gnu/release/ember"))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} is missing: `make build` builds it (RUSTFLAGS=\"-C target-feature=+crt-static\" \
         cargo build --release --target x86_64-unknown-linux-gnu --bin ember)",
        path.display()
    );
    path
}

/// Guest artifacts by name (`test-elf`, `test-pvh`, `kernel`, ...), built or
/// found in the cache by `resources/guests.sh` once per test binary, or read
/// from the `name=path` file `EMBER_GUESTS` names (guests built elsewhere).
pub fn artifact(name: &str) -> PathBuf {
    static ARTIFACTS: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let all = ARTIFACTS.get_or_init(|| {
        let listing = match std::env::var("EMBER_GUESTS") {
            Ok(file) => std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("cannot read EMBER_GUESTS file {file}: {e}")),
            Err(_) => {
                let script = workspace_root().join("resources/guests.sh");
                let out = Command::new("bash")
                    .arg(&script)
                    .stderr(Stdio::inherit())
                    .output()
                    .expect("run resources/guests.sh");
                assert!(
                    out.status.success(),
                    "resources/guests.sh failed: {}",
                    out.status
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        listing
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
            .collect()
    });
    all.get(name)
        .unwrap_or_else(|| panic!("resources/guests.sh printed no '{name}=' artifact"))
        .clone()
}

/// Where `resources/guests.sh` caches the guests (`EMBER_CACHE`, or ~/.cache/ember).
pub fn guest_cache_dir() -> PathBuf {
    std::env::var_os("EMBER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/ember")
        })
}

/// The `mem:` lines a test guest prints for `mem_mib` of RAM, from ember's documented layout.
pub fn expected_memory_lines(mem_mib: u64) -> Vec<String> {
    let size = mem_mib << 20;
    let gap = 0xd000_0000u64;
    let mut ranges = vec![(0u64, 0x9fc00u64)];
    if size <= gap {
        ranges.push((0x10_0000, size - 0x10_0000));
    } else {
        ranges.push((0x10_0000, gap - 0x10_0000));
        ranges.push((1 << 32, size - gap));
    }
    let mut lines: Vec<String> = ranges
        .iter()
        .map(|&(start, len)| format!("mem: {start:#x}-{:#x} type=1", start + len - 1))
        .collect();
    // On PCI, the configuration space (ECAM) is reserved after the RAM.
    if crate::ember::on_pci() {
        lines.push("mem: 0xe0000000-0xe00fffff type=2".into());
    }
    lines
}
