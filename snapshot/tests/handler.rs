//! `ember-snapshot handler` against a stand-in VMM: this test process maps
//! "guest memory", registers it with a userfaultfd and hands it over with
//! Firecracker's handshake, then touches pages as a guest would.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use userfaultfd::{FeatureFlags, Uffd, UffdBuilder};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const PAGE: usize = 4096;
const PAGES: usize = 4;

struct Handler {
    child: Child,
    lines: Receiver<String>,
    socket: PathBuf,
    dir: PathBuf,
}

impl Handler {
    fn start(tag: &str) -> Handler {
        let dir = std::env::temp_dir().join(format!("ember-handler-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Page i of the memory file is filled with i + 1.
        let mem: Vec<u8> = (0..PAGES)
            .flat_map(|i| vec![u8::try_from(i + 1).expect("a few pages"); PAGE])
            .collect();
        std::fs::write(dir.join("mem"), mem).unwrap();
        let socket = dir.join("uffd.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ember-snapshot"))
            .arg("handler")
            .arg("--socket")
            .arg(&socket)
            .arg("--mem-file")
            .arg(dir.join("mem"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let handler = Handler {
            child,
            lines,
            socket,
            dir,
        };
        assert!(handler.line().starts_with("listening on"));
        handler
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a line from the handler")
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Guest memory of `PAGES` pages served by the handler at `socket`.
struct Guest {
    base: *mut u8,
    _uffd: Uffd,
    _socket: UnixStream,
}

impl Guest {
    fn connect(socket: &Path) -> Guest {
        // SAFETY: a fresh anonymous private mapping, checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGES * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .user_mode_only(false)
            .require_features(FeatureFlags::EVENT_REMOVE)
            .create()
            .expect("a userfaultfd (the tests run as root)");
        uffd.register(base, PAGES * PAGE).unwrap();
        let regions = serde_json::json!([{"base_host_virt_addr": base as u64, "size": PAGES * PAGE,
            "offset": 0, "page_size": PAGE, "page_size_kib": PAGE / 1024}]);
        let stream = UnixStream::connect(socket).unwrap();
        stream
            .send_with_fd(regions.to_string().as_bytes(), uffd.as_raw_fd())
            .unwrap();
        Guest {
            base: base.cast(),
            _uffd: uffd,
            _socket: stream,
        }
    }

    fn read(&self, page: usize) -> u8 {
        // SAFETY: inside the mapping; a missing page blocks until the handler fills it.
        unsafe { self.base.add(page * PAGE + 7).read_volatile() }
    }

    /// Gives a page back, as a balloon driver makes the VMM do.
    fn discard(&self, page: usize) {
        // SAFETY: inside the mapping, page-aligned.
        let ret =
            unsafe { libc::madvise(self.base.add(page * PAGE).cast(), PAGE, libc::MADV_DONTNEED) };
        assert_eq!(ret, 0);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `connect`, no longer used.
        unsafe { libc::munmap(self.base.cast(), PAGES * PAGE) };
    }
}

#[test]
fn pages_come_from_the_file_and_given_back_pages_read_as_zeros() {
    let handler = Handler::start("remove");
    let guest = Guest::connect(&handler.socket);
    assert_eq!(guest.read(1), 2, "copied from the memory file on demand");
    assert_eq!(guest.read(3), 4);
    guest.discard(1);
    assert_eq!(
        guest.read(1),
        0,
        "a removed page is a zero page, not the file's"
    );
    assert_eq!(guest.read(1), 0);
    drop(guest);
    assert_eq!(
        handler.line(),
        "vm 0: prefetched 0 pages, served 2 faults (1 zero)"
    );
}

#[test]
fn a_vm_that_leaves_mid_way_does_not_stop_the_handler() {
    let handler = Handler::start("leave");
    drop(Guest::connect(&handler.socket));
    assert_eq!(
        handler.line(),
        "vm 0: prefetched 0 pages, served 0 faults (0 zero)"
    );
    let guest = Guest::connect(&handler.socket);
    assert_eq!(guest.read(0), 1, "the next VM is served");
    drop(guest);
    assert!(handler.line().starts_with("vm 1: "));
}
