//! Minimal runtime for ember's unikernel guests.
//!
//! The guest spends a few dozen instructions in ring 0 (see `boot`) and runs
//! everything else in ring 3 with interrupts off, polling its devices: under
//! kvm_pvm ring-0 code is emulated about 5000x slower, while ring 3 runs natively.
//! Memory is identity-mapped, so a pointer is also the guest-physical address that
//! devices use for DMA.
//!
//! A guest binary links with `link.ld` (published to its build script as
//! `DEP_EMBER_RT_LINK_LD`) and names its main function with [`entry!`].
#![cfg_attr(not(test), no_std)]

#[cfg(not(test))]
mod boot;
pub mod bootinfo;
pub mod cmdline;
pub mod io;
pub mod mptable;
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
