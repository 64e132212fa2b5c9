//! ember's function runtime: serves invocations of one function over virtio-vsock.
//!
//! The runtime listens on vsock port 1024 (`ember.port=<n>` on the command line
//! overrides it) and reads requests from any number of connections, each carrying
//! any number of sequential invocations (framing in [`framing`]). Requests are
//! served one at a time, in the order they completed. With `ember.http=<port>` (and
//! `ip=`) the runtime also serves the function over HTTP on that TCP port
//! ([`crate::net::serve`]), taking requests from both in turns. With `ember.net=mmds`
//! a VM restored from a snapshot takes its address and MAC address from the MMDS
//! (`/ember/network`: `ip=` as on the command line and `mac=`), so that each clone
//! answers at its own. Between invocations the vCPU
//! sleeps in `hlt` until a device interrupts (or a network timer is due). The
//! function may open streams to host ports ([`HostStream`]), use the network
//! ([`crate::net`]) and ask for random bytes ([`crate::random`]).
//!
//! A panicking function does not end the guest: the panic handler answers status 2
//! with the panic message and restarts the serving loop on a fresh stack. The
//! function's frames are abandoned like a `longjmp` would (no destructors run), so
//! whatever the function had allocated at that moment stays allocated: freeing it
//! could leave dangling pointers in the function's statics. The request buffer
//! belongs to the runtime and is freed, and host streams it held are reset. The runtime itself never panics when the
//! heap runs out; a request that does not fit is answered with an error.

pub mod framing;
pub mod poll;
pub mod server;

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// An invocable function: the request's bytes in, the response's bytes out.
pub type Function = fn(&[u8]) -> Result<Vec<u8>, Error>;

/// A function's failure, sent to the caller as status 1 with the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    message: Cow<'static, str>,
}

impl Error {
    pub fn new(message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            message: message.into(),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<&'static str> for Error {
    fn from(message: &'static str) -> Error {
        Error::new(message)
    }
}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error::new(message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Declares the guest's function, a [`Function`]; the runtime serves it.
#[macro_export]
macro_rules! function {
    ($function:path) => {
        #[unsafe(no_mangle)]
        fn ember_main(boot: &$crate::BootInfo) -> ! {
            let function: $crate::function::Function = $function;
            $crate::function::run(boot, function)
        }
    };
}

#[cfg(not(any(test, feature = "hosted")))]
mod runtime;

#[cfg(not(any(test, feature = "hosted")))]
pub use runtime::{HostStream, run};
#[cfg(not(any(test, feature = "hosted")))]
pub(crate) use runtime::{fill_random, in_function, net_until, recover, with_stack};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_their_message() {
        let owned = Error::from(alloc::format!("bad input {}", 7));
        assert_eq!(owned.message(), "bad input 7");
        assert_eq!(Error::from("nope").to_string(), "nope");
    }
}
