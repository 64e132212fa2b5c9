//! The microVM metadata service (Firecracker's MMDS): a JSON document the
//! platform writes over the API and the guest reads over HTTP at a
//! link-local address, answered inside ember by the net devices MMDS is
//! configured on. Nothing of it touches the host's network.
//!
//! - [`store`]: the document and its size limit;
//! - [`token`]: V2 session tokens;
//! - [`http`]: the guest's HTTP requests and their answers;
//! - [`stack`]: the TCP/IP endpoint (smoltcp) a net device hands the guest's
//!   frames for the MMDS address to.

pub mod http;
pub mod stack;
pub mod store;
pub mod token;

use std::sync::{Arc, Mutex, MutexGuard};

pub use store::{Error, MmdsStore, DEFAULT_SIZE_LIMIT};

use crate::config::MmdsVersion;
use token::Tokens;

/// Everything the guest's requests read: the document, the protocol version
/// and the session tokens handed out.
#[derive(Debug, Default)]
pub struct Mmds {
    pub store: MmdsStore,
    pub version: MmdsVersion,
    /// Answer IMDS-style plain text whatever the request accepts.
    pub imds_compat: bool,
    pub tokens: Tokens,
}

/// The service, shared by the controller (which the API reaches) and every
/// net device it is configured on; all of them run on the main thread, so
/// the lock is never contended.
#[derive(Debug, Clone, Default)]
pub struct SharedMmds(Arc<Mutex<Mmds>>);

impl SharedMmds {
    /// The service, or `None` if a thread panicked holding it.
    pub fn lock(&self) -> Option<MutexGuard<'_, Mmds>> {
        self.0.lock().ok()
    }
}
