//! Time from the TSC, which ring 3 reads natively (`rdtsc`): its frequency, and
//! conversions between TSC ticks and durations.

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

pub use crate::io::rdtsc as now;

/// CPUID leaf whose EAX is the highest hypervisor leaf.
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// CPUID leaf whose EAX is the TSC frequency in kHz, as VMware, Xen and ember report it.
const LEAF_TIMING: u32 = 0x4000_0010;
/// CPUID.1:ECX bit set under a hypervisor (leaves 0x4000_00xx are meaningful then).
const ECX_HYPERVISOR: u32 = 1 << 31;

/// The frequency assumed when the hypervisor does not report one: a guess typical of
/// server CPUs. Every duration is then off by its ratio to the real frequency (a
/// 10 s timeout may last 8 or 13 s), which only timeouts and benchmarks notice.
pub const FALLBACK_KHZ: u64 = 2_500_000;

/// The frequency once read (0 before): CPUID exits to the VMM, so it is read once.
static KHZ: AtomicU64 = AtomicU64::new(0);

/// The TSC frequency in kHz: CPUID leaf 0x4000_0010, else [`FALLBACK_KHZ`].
pub fn tsc_khz() -> u64 {
    match KHZ.load(Ordering::Relaxed) {
        0 => {
            let khz = khz_from_cpuid(cpuid);
            KHZ.store(khz, Ordering::Relaxed);
            khz
        }
        khz => khz,
    }
}

fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid(leaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The TSC frequency that `cpuid` (leaf to EAX..EDX) reports, or the fallback.
fn khz_from_cpuid(cpuid: impl Fn(u32) -> [u32; 4]) -> u64 {
    let hypervisor = cpuid(1)[2] & ECX_HYPERVISOR != 0;
    if !hypervisor || cpuid(LEAF_HYPERVISOR)[0] < LEAF_TIMING {
        return FALLBACK_KHZ;
    }
    match cpuid(LEAF_TIMING)[0] {
        0 => FALLBACK_KHZ,
        khz => u64::from(khz),
    }
}

/// The TSC ticks `duration` takes at `khz`, saturating.
pub fn ticks_at(duration: Duration, khz: u64) -> u64 {
    u64::try_from(duration.as_nanos() * u128::from(khz) / 1_000_000).unwrap_or(u64::MAX)
}

/// The nanoseconds `ticks` take at `khz`, saturating.
pub fn nanos_at(ticks: u64, khz: u64) -> u64 {
    u64::try_from(u128::from(ticks) * 1_000_000 / u128::from(khz.max(1))).unwrap_or(u64::MAX)
}

/// The TSC ticks `duration` takes.
pub fn ticks(duration: Duration) -> u64 {
    ticks_at(duration, tsc_khz())
}

/// The nanoseconds `ticks` TSC ticks take.
pub fn nanos(ticks: u64) -> u64 {
    nanos_at(ticks, tsc_khz())
}

/// Nanoseconds since `start`, a TSC value from [`now`].
pub fn elapsed_nanos(start: u64) -> u64 {
    nanos(now().wrapping_sub(start))
}

/// The TSC value `timeout` from now.
pub fn deadline(timeout: Duration) -> u64 {
    now().saturating_add(ticks(timeout))
}

/// Whether the TSC has reached `deadline`.
pub fn passed(deadline: u64) -> bool {
    now() >= deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU whose CPUID reports `hypervisor`, `max_leaf` and `khz`.
    fn cpu(hypervisor: bool, max_leaf: u32, khz: u32) -> impl Fn(u32) -> [u32; 4] {
        move |leaf| match leaf {
            1 if hypervisor => [0, 0, ECX_HYPERVISOR, 0],
            LEAF_HYPERVISOR => [max_leaf, 0, 0, 0],
            LEAF_TIMING => [khz, 0, 0, 0],
            _ => [0; 4],
        }
    }

    #[test]
    fn reads_the_frequency_the_hypervisor_reports() {
        assert_eq!(khz_from_cpuid(cpu(true, LEAF_TIMING, 2_100_000)), 2_100_000);
        assert_eq!(khz_from_cpuid(cpu(true, LEAF_TIMING, 0)), FALLBACK_KHZ);
        assert_eq!(khz_from_cpuid(cpu(true, 0x4000_0001, 7)), FALLBACK_KHZ);
        assert_eq!(
            khz_from_cpuid(cpu(false, LEAF_TIMING, 7)),
            FALLBACK_KHZ,
            "no hypervisor: leaf 0x4000_0010 means nothing"
        );
    }

    #[test]
    fn converts_between_ticks_and_durations() {
        let khz = 2_600_000;
        assert_eq!(ticks_at(Duration::from_millis(10), khz), 26_000_000);
        assert_eq!(nanos_at(26_000_000, khz), 10_000_000);
        assert_eq!(nanos_at(u64::MAX, 1), u64::MAX);
        assert_eq!(ticks_at(Duration::MAX, khz), u64::MAX);
        assert_eq!(nanos_at(5, 0), 5_000_000, "a zero frequency divides by 1");
    }
}
