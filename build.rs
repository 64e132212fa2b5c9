//! Compiles the default seccomp filters (`resources/seccomp/x86_64.json`)
//! into BPF at build time, so ember installs them without parsing anything,
//! each laid out as a binary search on the syscall number
//! (`src/seccomp/tree.rs`), which the kernel evaluates fast when it
//! installs the filter.
//!
//! Output, in `OUT_DIR/seccomp_filters.bpf`: for each thread kind in the
//! order vmm, api, vcpu, a little-endian u32 instruction count followed by
//! that many 8-byte `sock_filter`s (u16 code, u8 jt, u8 jf, u32 k).

use std::path::PathBuf;

#[path = "src/seccomp/tree.rs"]
mod tree;

const KINDS: [&str; 3] = ["vmm", "api", "vcpu"];

fn main() {
    let source = PathBuf::from("resources/seccomp/x86_64.json");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed=src/seccomp/tree.rs");
    let json =
        std::fs::read(&source).unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    let policy: serde_json::Value =
        serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    let mut out = Vec::new();
    for kind in KINDS {
        let program =
            tree::compile(&policy, kind).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        let len = u32::try_from(program.len())
            .unwrap_or_else(|_| panic!("{}: the '{kind}' filter is too long", source.display()));
        out.extend_from_slice(&len.to_le_bytes());
        for insn in program {
            out.extend_from_slice(&insn.code.to_le_bytes());
            out.push(insn.jt);
            out.push(insn.jf);
            out.extend_from_slice(&insn.k.to_le_bytes());
        }
    }
    let dest =
        PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("seccomp_filters.bpf");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}
