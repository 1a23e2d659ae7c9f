//! A local 3-node NATS JetStream cluster for the cluster tests, started by
//! `scripts/nats-cluster.sh` in a temporary directory on free ports; stopped (by PID) on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};

/// One NATS cluster at a time: the machine is small, and leases and elections are timed.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Held while a test runs its NATS cluster: the lock of this process's tests, and a lock on a
/// file shared by every process, since a runner that starts each test in a process of its own
/// (`cargo nextest`) would otherwise run two clusters at once — timed leases then lapse under
/// the load, and two port ranges picked at once can meet (one such run failed a takeover).
pub struct Serial {
    _file: std::fs::File,
    _guard: std::sync::MutexGuard<'static, ()>,
}

pub fn serial() -> Serial {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::env::temp_dir().join("imstore-nats-cluster-tests.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // Released when the file closes, also when the process dies.
    file.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    Serial {
        _file: file,
        _guard: guard,
    }
}

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nats-cluster.sh")
}

/// A 3-node NATS cluster, stopped (every process, by PID) on drop.
pub struct Nats {
    pub dir: tempfile::TempDir,
    pub base: u16,
    pub urls: String,
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A port base whose client, route and monitoring ports (base..+3, +2000.., +4000..) are free.
fn free_base() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    for _ in 0..200 {
        let k = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
        let base = 21000 + ((std::process::id() + k) * 10 % 1900) as u16;
        let all = (0..3).flat_map(|i| [base + i, base + 2000 + i, base + 4000 + i]);
        if all.clone().all(port_free) {
            return base;
        }
    }
    panic!("no free port range for a NATS cluster");
}

impl Nats {
    pub fn up() -> Nats {
        let server = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let found = Command::new(&server).arg("--version").output();
        assert!(
            found.as_ref().is_ok_and(|o| o.status.success()),
            "the cluster tests need `nats-server` (Debian: apt-get install nats-server; or set \
             NATS_SERVER): {found:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let base = free_base();
        let mut nats = Nats {
            dir,
            base,
            urls: String::new(),
        };
        let out = nats.run(&["up"]);
        nats.urls = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        nats
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg(args[0])
            .arg(self.dir.path())
            .args(&args[1..])
            .env("NATS_PORT_BASE", self.base.to_string())
            .env("NATS_WAIT_SECS", "30");
        let out = cmd.output().expect("running scripts/nats-cluster.sh");
        if !out.status.success() {
            let logs: String = (1..=3)
                .map(|n| {
                    let log = std::fs::read_to_string(self.dir.path().join(format!("n{n}.log")))
                        .unwrap_or_default();
                    let tail: Vec<_> = log.lines().rev().take(15).collect();
                    format!("--- n{n}.log (last lines)\n{}\n", tail.join("\n"))
                })
                .collect();
            panic!(
                "nats-cluster.sh {args:?} failed: {}\n{}{logs}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// SIGKILLs node `n` (1-3).
    pub fn kill(&self, n: u32) {
        self.run(&["kill", &n.to_string()]);
    }

    /// Starts node `n` again.
    pub fn start(&self, n: u32) {
        self.run(&["start", &n.to_string()]);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(self.dir.path())
            .env("NATS_PORT_BASE", self.base.to_string())
            .env("NATS_WAIT_SECS", "5")
            .output();
        // Whatever the script left: by PID, never by name.
        for n in 1..=3 {
            let pid_file = self.dir.path().join(format!("n{n}.pid"));
            let pid = std::fs::read_to_string(pid_file).unwrap_or_default();
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .output();
            }
        }
    }
}
