//! The guest memory regions a VMM describes to its userfaultfd handler, in
//! Firecracker's handshake: a JSON array, sent with the userfaultfd, of one
//! object per region with its host address, size and offset in the memory
//! file.

use core::fmt;

/// One guest memory region (Firecracker's `GuestRegionUffdMapping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Where the region is mapped in the VMM.
    pub base_host_virt_addr: u64,
    pub size: u64,
    /// Where the region's bytes start in the memory file.
    pub offset: u64,
    /// The size of the pages backing the region.
    pub page_size: u64,
}

/// `regions` as the handshake's JSON array; Firecracker's deprecated
/// `page_size_kib` is written too, for handlers that still read it.
pub struct RegionsJson<'a>(pub &'a [Region]);

impl fmt::Display for RegionsJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (index, region) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(
                f,
                "{{\"base_host_virt_addr\":{},\"size\":{},\"offset\":{},\"page_size\":{},\"page_size_kib\":{}}}",
                region.base_host_virt_addr,
                region.size,
                region.offset,
                region.page_size,
                region.page_size / 1024
            )?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn regions_are_written_as_firecrackers_json_array() {
        let regions = [
            Region {
                base_host_virt_addr: 0x7f00_0000_0000,
                size: 4096,
                offset: 0,
                page_size: 4096,
            },
            Region {
                base_host_virt_addr: 1,
                size: 2,
                offset: 3,
                page_size: 2 << 20,
            },
        ];
        assert_eq!(
            RegionsJson(&regions).to_string(),
            "[{\"base_host_virt_addr\":139637976727552,\"size\":4096,\"offset\":0,\"page_size\":4096,\"page_size_kib\":4},\
             {\"base_host_virt_addr\":1,\"size\":2,\"offset\":3,\"page_size\":2097152,\"page_size_kib\":2048}]"
        );
        assert_eq!(RegionsJson(&[]).to_string(), "[]");
    }
}
