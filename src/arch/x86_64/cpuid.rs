//! CPUID as a vCPU sees it: what KVM supports on this host, plus the
//! topology, APIC id and hypervisor bits that make each vCPU a distinct CPU
//! of one package.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// The timing leaf VMware, Xen and ACRN share: EAX is the TSC's frequency
/// in kHz, so a guest without a calibration timer (ember's unikernels)
/// can tell time from the TSC.
const LEAF_TIMING: u32 = 0x4000_0010;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

/// Topology level types of leaf 0xB.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Rewrites the host's supported CPUID for vCPU `index` of `count` vCPUs,
/// presented as `count` single-threaded cores of one socket, with the TSC
/// frequency in the timing leaf when KVM knows it.
pub fn filter(entries: &mut Vec<kvm_cpuid_entry2>, index: u8, count: u8, tsc_khz: Option<u32>) {
    let apic_id = u32::from(index);
    let count = u32::from(count.max(1));
    // Bits of the APIC id that number cores within the package.
    let core_bits = u32::BITS - (count - 1).leading_zeros();

    entries.retain(|e| e.function != LEAF_TOPOLOGY_V2 && e.function != LEAF_AMD_TOPOLOGY);
    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
                // KVM emulates the TSC-deadline timer whatever the host offers.
                entry.ecx |= ECX_HYPERVISOR | ECX_TSC_DEADLINE;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // Cores per package - 1 in EAX[31:26]; each cache is private to one core.
                entry.eax = (entry.eax & 0x03ff_c3ff) | ((count - 1) << 26);
            }
            LEAF_PMU => {
                // No virtual PMU: guests must not program counters they cannot use.
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_TOPOLOGY => {
                entry.edx = apic_id;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = (LEVEL_SMT << 8) | entry.index;
                    }
                    1 => {
                        entry.eax = core_bits;
                        entry.ebx = count;
                        entry.ecx = (LEVEL_CORE << 8) | entry.index;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            LEAF_AMD_SIZES => {
                entry.ecx = (entry.ecx & !0xf0ff) | (core_bits << 12) | (count - 1);
            }
            _ => {}
        }
    }
    if !entries.iter().any(|e| e.function == LEAF_HYPERVISOR) {
        // "KVMKVMKVM\0\0\0": tells the guest it may use KVM's paravirtual features.
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_HYPERVISOR,
            eax: LEAF_HYPERVISOR | 1,
            ebx: 0x4b4d_564b,
            ecx: 0x564b_4d56,
            edx: 0x4d,
            ..Default::default()
        });
    }
    if let Some(khz) = tsc_khz {
        entries.retain(|e| e.function != LEAF_TIMING);
        for entry in entries.iter_mut().filter(|e| e.function == LEAF_HYPERVISOR) {
            entry.eax = entry.eax.max(LEAF_TIMING);
        }
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_TIMING,
            eax: khz,
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn host() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(LEAF_FEATURES, 0),
            leaf(LEAF_CACHE_PARAMS, 0),
            leaf(LEAF_PMU, 0),
            leaf(LEAF_TOPOLOGY, 0),
            leaf(LEAF_TOPOLOGY, 1),
            leaf(LEAF_TOPOLOGY_V2, 0),
            leaf(LEAF_AMD_TOPOLOGY, 0),
            leaf(LEAF_AMD_SIZES, 0),
        ]
    }

    #[test]
    fn each_vcpu_gets_its_own_apic_id() {
        for index in 0..4 {
            let mut entries = host();
            filter(&mut entries, index, 4, None);
            assert_eq!(find(&entries, LEAF_FEATURES, 0).ebx >> 24, u32::from(index));
            assert_eq!(find(&entries, LEAF_TOPOLOGY, 0).edx, u32::from(index));
            assert_eq!(find(&entries, LEAF_TOPOLOGY, 1).edx, u32::from(index));
        }
    }

    #[test]
    fn topology_is_count_cores_of_one_thread() {
        let mut entries = host();
        filter(&mut entries, 0, 6, None);
        let features = find(&entries, LEAF_FEATURES, 0);
        assert_eq!((features.ebx >> 16) & 0xff, 6);
        assert_ne!(features.edx & EDX_HTT, 0);
        assert_ne!(features.ecx & ECX_HYPERVISOR, 0);
        let smt = find(&entries, LEAF_TOPOLOGY, 0);
        assert_eq!(
            (smt.eax, smt.ebx & 0xffff, smt.ecx >> 8 & 0xff),
            (0, 1, LEVEL_SMT)
        );
        let core = find(&entries, LEAF_TOPOLOGY, 1);
        assert_eq!(
            (core.eax, core.ebx & 0xffff, core.ecx >> 8 & 0xff),
            (3, 6, LEVEL_CORE)
        );
        assert_eq!(find(&entries, LEAF_CACHE_PARAMS, 0).eax >> 26, 5);
        assert_eq!(find(&entries, LEAF_AMD_SIZES, 0).ecx & 0xff, 5);
        assert_eq!(find(&entries, LEAF_PMU, 0).eax, 0);
    }

    #[test]
    fn single_vcpu_has_no_htt_and_one_core() {
        let mut entries = host();
        filter(&mut entries, 0, 1, None);
        assert_eq!(find(&entries, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&entries, LEAF_TOPOLOGY, 1).eax, 0);
        assert_eq!(find(&entries, LEAF_TOPOLOGY, 1).ebx, 1);
    }

    #[test]
    fn leaves_ember_cannot_describe_are_removed_and_kvm_leaf_is_present() {
        let mut entries = host();
        filter(&mut entries, 0, 2, Some(2_600_000));
        assert!(entries.iter().all(|e| e.function != LEAF_TOPOLOGY_V2));
        assert!(entries.iter().all(|e| e.function != LEAF_AMD_TOPOLOGY));
        let kvm = find(&entries, LEAF_HYPERVISOR, 0);
        let mut signature = Vec::new();
        for reg in [kvm.ebx, kvm.ecx, kvm.edx] {
            signature.extend_from_slice(&reg.to_le_bytes());
        }
        assert_eq!(&signature[..9], b"KVMKVMKVM");
        assert_eq!(kvm.eax, LEAF_TIMING, "the timing leaf is in range");
        assert_eq!(find(&entries, LEAF_TIMING, 0).eax, 2_600_000);
    }
}
