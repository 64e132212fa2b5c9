//! Randomness for functions: [`fill`] fills a buffer with random bytes from the
//! host's entropy device (virtio-rng, Firecracker's `PUT /entropy`; driver in
//! [`crate::virtio::rng`]), blocking like [`HostStream`](crate::function::HostStream)
//! while the runtime serves other traffic. The device comes up at the first call:
//! setting it up costs VM exits that a function which never asks should not pay at
//! boot.
//!
//! Nothing is cached: each call asks the device for exactly what it wants, so VMs
//! restored from one snapshot never share bytes taken before it (what a function
//! keeps across invocations, a seeded generator say, they do share).
//!
//! With rt's `getrandom` feature this is also the `getrandom` crate's custom backend,
//! so that crates which take their randomness from it work in a function.

#[cfg(any(test, not(feature = "hosted")))]
mod filler;

use core::fmt;

#[cfg(not(any(test, feature = "hosted")))]
pub(crate) use self::filler::{Filler, Step};
use crate::function;

/// Why no random bytes came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RandomError {
    /// The VM has no entropy device.
    NoDevice,
}

impl fmt::Display for RandomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RandomError::NoDevice => {
                f.write_str("no entropy device: PUT /entropy before InstanceStart")
            }
        }
    }
}

impl From<RandomError> for function::Error {
    fn from(err: RandomError) -> function::Error {
        function::Error::new(alloc::format!("{err}"))
    }
}

/// Fills `buf` with random bytes from the entropy device. Blocks until it is full,
/// however many answers that takes (the device may write fewer bytes than asked,
/// or none), serving the runtime's other traffic meanwhile. An empty `buf` needs
/// no device.
#[cfg(not(any(test, feature = "hosted")))]
pub fn fill(buf: &mut [u8]) -> Result<(), RandomError> {
    if buf.is_empty() {
        return Ok(());
    }
    function::fill_random(buf)
}

/// The `getrandom` crate's custom backend (`getrandom_backend="custom"`, which
/// `.cargo/config.toml` sets for the guests): [`fill`]. getrandom 0.3 calls it,
/// and so does 0.4, whose custom backend kept the same hook.
#[cfg(feature = "getrandom")]
mod backend {
    use super::RandomError;
    use crate::function;

    /// What the backend returns for [`RandomError::NoDevice`], its only failure.
    const NO_DEVICE: getrandom::Error = getrandom::Error::new_custom(0);

    /// # Safety
    /// `dest` must be valid for writes of `len` bytes (maybe uninitialized), as
    /// getrandom guarantees.
    #[cfg(not(any(test, feature = "hosted")))]
    #[unsafe(no_mangle)]
    unsafe extern "Rust" fn __getrandom_v03_custom(
        dest: *mut u8,
        len: usize,
    ) -> Result<(), getrandom::Error> {
        // SAFETY: as the caller guarantees; zeroed first, the bytes are initialized.
        let buf = unsafe {
            dest.write_bytes(0, len);
            core::slice::from_raw_parts_mut(dest, len)
        };
        super::fill(buf).map_err(|RandomError::NoDevice| NO_DEVICE)
    }

    /// So that a function can `?` getrandom's errors and still say what is wrong.
    impl From<getrandom::Error> for function::Error {
        fn from(err: getrandom::Error) -> function::Error {
            if err == NO_DEVICE {
                RandomError::NoDevice.into()
            } else {
                function::Error::new(alloc::format!("getrandom: {err}"))
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn says_what_is_missing_through_getrandom() {
            assert_eq!(
                function::Error::from(NO_DEVICE).message(),
                "no entropy device: PUT /entropy before InstanceStart"
            );
            let other = function::Error::from(getrandom::Error::UNSUPPORTED);
            assert!(other.message().starts_with("getrandom: "), "{other}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_is_missing() {
        assert_eq!(
            function::Error::from(RandomError::NoDevice).message(),
            "no entropy device: PUT /entropy before InstanceStart"
        );
    }
}
