//! Build script shared by the guest binaries (their manifests point `build` here):
//! links each with rt's linker script as a static, freestanding executable.

fn main() {
    let script = std::env::var("DEP_EMBER_RT_LINK_LD").expect("rt publishes its linker script");
    println!("cargo::rerun-if-changed={script}");
    for arg in [
        &format!("-T{script}"),
        "-nostartfiles",
        "-nostdlib",
        "-static",
    ] {
        println!("cargo::rustc-link-arg-bins={arg}");
    }
}
