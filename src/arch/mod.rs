//! Architecture-specific machine setup. ember runs on x86_64 only.

pub mod x86_64;
