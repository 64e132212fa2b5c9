//! The spec and the server agree: schemathesis (from PyPI, see
//! `tests/schemathesis/cli.sh`) runs every check, positive and negative data and
//! its stateful phase, against `api-spec/ember.yaml` on a jailed ember that has
//! not started, reached over a TCP-to-Unix-socket bridge. The jail keeps the
//! paths it makes up (log files, metrics files) inside the chroot.
//! `tests/schemathesis/schemathesis.toml` lists the refusals the spec documents.
//!
//! `EMBER_SCHEMATHESIS_SECONDS` sets the time budget (60 s in `make test`).

use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use ember_test_support::{http, Jail};

const DEFAULT_SECONDS: &str = "60";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The pinned schemathesis CLI, installed on first use.
fn schemathesis() -> PathBuf {
    let script = workspace().join("tests/schemathesis/cli.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run tests/schemathesis/cli.sh");
    assert!(
        out.status.success(),
        "installing schemathesis failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Relays one connection both ways, each direction on a thread of its own
/// that passes the end of its stream on.
fn relay(tcp: TcpStream, unix: UnixStream) -> std::io::Result<()> {
    let (mut tcp_in, mut unix_out) = (tcp.try_clone()?, unix.try_clone()?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut tcp_in, &mut unix_out);
        let _ = unix_out.shutdown(Shutdown::Write);
    });
    let (mut unix_in, mut tcp_out) = (unix, tcp);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut unix_in, &mut tcp_out);
        let _ = tcp_out.shutdown(Shutdown::Write);
    });
    Ok(())
}

/// Serves `127.0.0.1:<port>` by relaying each connection to the Unix socket
/// `socket`; returns the port.
fn bridge(socket: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            if let Ok(unix) = UnixStream::connect(&socket) {
                let _ = relay(tcp, unix);
            }
        }
    });
    port
}

#[test]
fn schemathesis_finds_no_disagreement_between_the_spec_and_ember() {
    let cli = schemathesis();
    let jail = Jail::start("schema", &[]);
    let port = bridge(jail.socket());
    let seconds =
        std::env::var("EMBER_SCHEMATHESIS_SECONDS").unwrap_or_else(|_| DEFAULT_SECONDS.into());
    let root = workspace();
    let out = Command::new(&cli)
        .arg("--config-file")
        .arg(root.join("tests/schemathesis/schemathesis.toml"))
        .arg("run")
        .arg(root.join("api-spec/ember.yaml"))
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args(["--checks", "all", "--exclude-checks", "unsupported_method"])
        .args(["--max-time", &seconds, "--workers", "1", "--no-color"])
        .current_dir(jail.root())
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(
        out.status.success(),
        "schemathesis found disagreements (see above): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("Stateful"),
        "the stateful phase did not run"
    );
    let (status, _) = http(&jail.socket(), "GET", "/version", b"");
    assert_eq!(status, 200, "ember kept serving throughout");
}
