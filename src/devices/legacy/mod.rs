//! Legacy PC devices: the COM1 UART and the i8042 keyboard controller.

pub mod i8042;
pub mod serial;
