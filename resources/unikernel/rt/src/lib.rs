//! Minimal runtime for ember's unikernel guests.
//!
//! The guest spends a few dozen instructions in ring 0 (see `boot`) and runs
//! everything else in ring 3 with interrupts off: under kvm_pvm ring-0 code is
//! emulated about 5000x slower, while ring 3 runs natively. Drivers poll their
//! devices, or sleep until an interrupt through the wait gate of [`irq`].
//! Memory is identity-mapped, so a pointer is also the guest-physical address that
//! devices use for DMA.
//!
//! A guest binary links with `link.ld` (its manifest points `build` at
//! `guest-build.rs`) and names its main function with [`entry!`], or is an ember
//! function and names a [`function::Function`] with [`function!`].
//!
//! Its unit tests, and host programs that enable the `hosted` feature (ember's
//! fuzz targets), build it with std and without what only a guest has: the boot
//! code, the global allocator and the function runtime.
#![cfg_attr(not(any(test, feature = "hosted")), no_std)]

extern crate alloc;

pub mod acpi;
#[cfg(not(any(test, feature = "hosted")))]
mod boot;
pub mod bootinfo;
pub mod cmdline;
pub mod function;
pub mod heap;
pub mod io;
pub mod irq;
pub mod mptable;
pub mod net;
pub mod random;
pub mod time;
pub mod virtio;

pub use bootinfo::{BootInfo, Protocol};

/// Declares the guest's main function, `fn(&BootInfo) -> !`, which the runtime calls
/// in ring 3 once it has read the boot information.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        fn ember_main(boot: &$crate::BootInfo) -> ! {
            let main: fn(&$crate::BootInfo) -> ! = $main;
            main(boot)
        }
    };
}
