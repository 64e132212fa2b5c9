//! `ember-snapshot`: tools around ember's snapshot files.
//!
//! - `handler`: serves restored VMs' memory over userfaultfd (Firecracker's
//!   handshake), on demand or prefetching a recorded working set.
//! - `merge`: applies a diff memory file onto its base.

use std::fs::OpenOptions;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;

use ember_snapshot::{memory, uffd};

const USAGE: &str = "usage:
  ember-snapshot handler --socket PATH --mem-file FILE [--working-set FILE]
      Serve the guest memory in FILE to every ember (or Firecracker) that loads a
      snapshot with {\"backend_type\": \"Uffd\", \"backend_path\": PATH}.
      --working-set: prefetch the pages listed there into each VM; if the file
      does not exist, record the pages the first VM touches until it exits.
  ember-snapshot merge --base FILE --diff FILE
      Copy the pages of a Diff snapshot's memory file onto its base memory file.";

/// `--name value` pairs, each allowed once.
fn flags(args: &[String], allowed: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut found: Vec<(String, String)> = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .filter(|n| allowed.contains(n))
            .ok_or_else(|| format!("unexpected argument '{flag}'"))?;
        let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        if found.iter().any(|(n, _)| n == name) {
            return Err(format!("--{name} given twice"));
        }
        found.push((name.to_string(), value.clone()));
    }
    Ok(found)
}

fn take(flags: &[(String, String)], name: &str) -> Option<PathBuf> {
    flags
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| PathBuf::from(v))
}

fn required(flags: &[(String, String)], name: &str) -> Result<PathBuf, String> {
    take(flags, name).ok_or_else(|| format!("--{name} is required"))
}

fn handler(args: &[String]) -> Result<(), String> {
    let flags = flags(args, &["socket", "mem-file", "working-set"])?;
    let socket = required(&flags, "socket")?;
    let mem = uffd::MemoryFile::open(&required(&flags, "mem-file")?).map_err(|e| e.to_string())?;
    let listener = UnixListener::bind(&socket)
        .map_err(|e| format!("cannot listen on '{}': {e}", socket.display()))?;
    println!("listening on {}", socket.display());
    uffd::run(listener, mem, take(&flags, "working-set")).map_err(|e| e.to_string())
}

fn merge(args: &[String]) -> Result<(), String> {
    let flags = flags(args, &["base", "diff"])?;
    let (base, diff) = (required(&flags, "base")?, required(&flags, "diff")?);
    let open = |path: &PathBuf, write: bool| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|e| format!("cannot open '{}': {e}", path.display()))
    };
    let copied =
        memory::merge(&open(&base, true)?, &open(&diff, false)?).map_err(|e| e.to_string())?;
    println!(
        "merged {copied} bytes of '{}' into '{}'",
        diff.display(),
        base.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    // The handler's socket and the working sets it records hold what a guest
    // touched: its own alone, whatever umask it was started with.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("handler") => handler(&args[1..]),
        Some("merge") => merge(&args[1..]),
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(format!("expected a subcommand\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember-snapshot: {e}");
            ExitCode::FAILURE
        }
    }
}
