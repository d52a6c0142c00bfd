//! A real redis-server on a free port.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{START_ATTEMPTS, free_port, scratch_root, watchdog};

pub struct RedisServer {
    dir: TempDir,
    port: u16,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("redis")
            .tempdir_in(scratch_root())
            .unwrap();
        let mut server = Self {
            dir,
            port: 0,
            child: Mutex::new(None),
        };
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start");
    }

    /// Spawns redis-server on `self.port` and waits until it listens; false if it exited.
    fn spawn(&self) -> bool {
        let socket = self.dir.path().join("redis.sock");
        let _ = fs::remove_file(&socket);
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run `scripts/ensure-deps.sh services`");
        let deadline = Instant::now() + Duration::from_secs(10);
        // The Unix socket in our own directory appears only after the TCP port is bound.
        while !socket.exists() {
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        watchdog("kill -9 \"$1\" 2>/dev/null", &[&child.id().to_string()]);
        *self.child.lock().unwrap() = Some(child);
        true
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, like an OOM-killed sidecar.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process holds its connections but answers nothing (a "slow" Redis).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .lock()
            .unwrap()
            .as_ref()
            .map(Child::id)
            .expect("redis-server runs");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
