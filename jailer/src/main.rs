//! `ember-jailer`: will put each ember process in its own chroot, namespaces
//! and cgroups, drop privileges and exec ember (Firecracker's jailer flags).
//! Not built yet: it refuses to run rather than pretend to jail anything.

fn main() {
    eprintln!("ember-jailer: not implemented yet; run ember directly");
    std::process::exit(1);
}
