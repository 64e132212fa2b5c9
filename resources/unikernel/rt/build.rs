//! Publishes the path of the linker script so guest binaries can link with it.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo::rerun-if-changed=link.ld");
    println!("cargo::metadata=link_ld={dir}/link.ld");
}
