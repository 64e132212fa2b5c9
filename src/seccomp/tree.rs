//! Lays a seccomp allowlist out as a binary search on the syscall number.
//!
//! seccompiler compiles a filter into one comparison per syscall, one after
//! the other. Installing a filter makes the kernel run it for every syscall
//! number (about 450) to find the always-allowed ones, and a number no rule
//! names walks the whole chain: for the `vmm` filter, about sixty syscall
//! comparisons and the jumps over their rules, at every process start.
//! Here the syscalls, sorted by number, go into small buckets, each compiled
//! by seccompiler as a filter of its own, and `JGE` comparisons on the
//! number pick the bucket: a few comparisons to reach any syscall's rules,
//! and the rules themselves are seccompiler's, unchanged.
//!
//! Used by `build.rs`, which compiles the built-in filters this way, and by
//! the tests, which check that both layouts decide every call alike.

use std::collections::BTreeMap;

use seccompiler::{sock_filter, TargetArch};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy has no filter for a kind of thread, or it is not a list.
    #[error("no list of rules for the '{0}' threads")]
    MissingKind(String),
    /// A rule without a syscall name.
    #[error("a rule of the '{0}' threads names no syscall")]
    Unnamed(String),
    /// seccompiler refused part of the policy.
    #[error("{0}")]
    Compile(#[from] seccompiler::Error),
    /// More instructions than a filter may have.
    #[error("the '{0}' filter has more than {BPF_MAXINSNS} instructions")]
    TooLong(String),
    /// seccompiler's output is not laid out as this module expects.
    #[error("seccompiler's program for the '{0}' threads has an unexpected layout")]
    Layout(String),
}

/// The instructions every seccompiler filter with rules starts with: load
/// the architecture, compare it, kill on a mismatch, load the syscall number.
const PROLOGUE: usize = 4;
/// The kernel's limit on a filter's length.
const BPF_MAXINSNS: usize = 4096;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_K: u16 = 0x00;

/// Syscalls per bucket: few enough that a walk through one stays short,
/// enough that the search adds only a few instructions per bucket.
const BUCKET: usize = 8;

/// Compiles the `kind` filter of `policy` (seccompiler's JSON format) into a
/// binary search over buckets of [`BUCKET`] syscalls.
pub fn compile(policy: &Value, kind: &str) -> Result<Vec<sock_filter>, Error> {
    let thread = policy
        .get(kind)
        .filter(|t| t["filter"].is_array())
        .ok_or_else(|| Error::MissingKind(kind.into()))?;
    let only = |rules: Vec<Value>| -> Result<Vec<sock_filter>, Error> {
        let mut filter = thread.clone();
        filter["filter"] = Value::Array(rules);
        let json = serde_json::json!({ kind: filter }).to_string();
        let mut compiled = seccompiler::compile_from_json(json.as_bytes(), TargetArch::x86_64)?;
        compiled
            .remove(kind)
            .ok_or_else(|| Error::MissingKind(kind.into()))
    };
    let mut by_name: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for rule in thread["filter"].as_array().into_iter().flatten() {
        let name = rule["syscall"]
            .as_str()
            .ok_or_else(|| Error::Unnamed(kind.into()))?;
        by_name.entry(name).or_default().push(rule.clone());
    }
    if by_name.is_empty() {
        return only(Vec::new());
    }
    // Each syscall's number, from the comparison seccompiler emits for it.
    let layout = || Error::Layout(kind.into());
    let mut syscalls = Vec::new();
    let mut prologue = None;
    for rules in by_name.into_values() {
        let program = only(rules.clone())?;
        let head = program.get(..PROLOGUE).ok_or_else(layout)?;
        let compare = program.get(PROLOGUE).ok_or_else(layout)?;
        if head[PROLOGUE - 1].code != BPF_LD_W_ABS
            || head[PROLOGUE - 1].k != 0
            || compare.code != BPF_JMP | BPF_JEQ | BPF_K
        {
            return Err(layout());
        }
        prologue.get_or_insert_with(|| head.to_vec());
        syscalls.push((compare.k, rules));
    }
    syscalls.sort_by_key(|(nr, _)| *nr);
    let prologue = prologue.ok_or_else(layout)?;
    let buckets = syscalls
        .chunks(BUCKET)
        .map(|chunk| {
            let program = only(chunk.iter().flat_map(|(_, r)| r.clone()).collect())?;
            match program.split_at_checked(PROLOGUE) {
                Some((head, code)) if head == prologue => Ok(Bucket {
                    first: chunk[0].0,
                    code: code.to_vec(),
                }),
                _ => Err(layout()),
            }
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let mut program = prologue;
    search(&buckets, &mut program);
    if program.len() > BPF_MAXINSNS {
        return Err(Error::TooLong(kind.into()));
    }
    Ok(program)
}

/// A bucket: the lowest syscall number it holds, and its code, a compiled
/// filter of its syscalls without the filter's prologue (the architecture
/// check and the load of the syscall number, which the tree does once).
struct Bucket {
    first: u32,
    code: Vec<sock_filter>,
}

/// Appends a binary search over `buckets` (sorted by `first`) that falls
/// into the bucket whose range holds the syscall number.
fn search(buckets: &[Bucket], out: &mut Vec<sock_filter>) {
    let [first, rest @ ..] = buckets else {
        return;
    };
    if rest.is_empty() {
        out.extend_from_slice(&first.code);
        return;
    }
    let (below, above) = buckets.split_at(buckets.len() / 2);
    let mut lower = Vec::new();
    search(below, &mut lower);
    // nr >= above[0].first: on to the jump over the lower half; else past it.
    out.push(sock_filter {
        code: BPF_JMP | BPF_JGE | BPF_K,
        jt: 0,
        jf: 1,
        k: above[0].first,
    });
    out.push(sock_filter {
        code: BPF_JMP | BPF_JA,
        jt: 0,
        jf: 0,
        // Past u32::MAX, the program is far too long and refused anyway.
        k: u32::try_from(lower.len()).unwrap_or(u32::MAX),
    });
    out.extend(lower);
    search(above, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    const BPF_ALU_AND_K: u16 = 0x54;
    const BPF_RET_K: u16 = 0x06;
    const BPF_JGT: u16 = 0x20;
    const BPF_JSET: u16 = 0x40;

    /// What a filter sees of a call: `seccomp_data` laid out as the kernel does.
    fn data(nr: u32, arch: u32, args: [u64; 6]) -> [u8; 64] {
        let mut d = [0u8; 64];
        d[0..4].copy_from_slice(&nr.to_le_bytes());
        d[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            d[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        d
    }

    /// Runs classic BPF as the kernel's seccomp does, for the instructions
    /// seccompiler emits; anything else fails the test.
    fn run(program: &[sock_filter], data: &[u8; 64]) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = &program[pc];
            pc += 1;
            let k = i.k;
            match i.code {
                BPF_LD_W_ABS => {
                    let at = k as usize;
                    a = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                }
                BPF_ALU_AND_K => a &= k,
                BPF_RET_K => return k,
                c if c == BPF_JMP | BPF_JA => pc += k as usize,
                c if c & 0x07 == BPF_JMP => {
                    let taken = match c & 0xf0 {
                        BPF_JEQ => a == k,
                        BPF_JGT => a > k,
                        BPF_JGE => a >= k,
                        BPF_JSET => a & k != 0,
                        op => panic!("unexpected jump {op:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                c => panic!("unexpected instruction {c:#x}"),
            }
        }
    }

    /// The built-in filters, laid out as a search, decide every syscall
    /// number and a spread of arguments exactly as seccompiler's own layout
    /// of the same JSON does, for each kind of thread.
    #[test]
    fn the_search_layout_decides_every_call_as_the_linear_one() {
        let json = include_bytes!("../../resources/seccomp/x86_64.json");
        let linear =
            seccompiler::compile_from_json(&json[..], seccompiler::TargetArch::x86_64).unwrap();
        let policy: Value = serde_json::from_slice(json).unwrap();
        let built = crate::seccomp::Filters::builtin().unwrap();
        let built = built.programs.as_ref().unwrap();
        const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
        for kind in crate::seccomp::ThreadKind::ALL {
            let tree = &built[kind as usize];
            assert_eq!(*tree, compile(&policy, kind.name()).unwrap());
            let linear = &linear[kind.name()];
            assert!(tree.len() < linear.len() * 3 / 2, "{}", kind.name());
            // Every constant the rules compare with, and its neighbours.
            let mut values: Vec<u64> = linear
                .iter()
                .flat_map(|i| [i.k, i.k.wrapping_add(1), i.k.wrapping_sub(1)])
                .map(u64::from)
                .collect();
            values.extend([0, u64::MAX, 1 << 32]);
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut pick = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                values[usize::try_from(seed).unwrap() % values.len()]
            };
            for nr in 0..=470 {
                for arch in [AUDIT_ARCH_X86_64, 0x4000_0003] {
                    for _ in 0..200 {
                        let args = [pick(), pick(), pick(), pick(), pick(), pick()];
                        let d = data(nr, arch, args);
                        assert_eq!(
                            run(tree, &d),
                            run(linear, &d),
                            "{} filter, syscall {nr}, arch {arch:#x}, args {args:x?}",
                            kind.name()
                        );
                    }
                }
            }
        }
    }
}
