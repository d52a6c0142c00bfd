//! Real PostgreSQL and Redis servers on free ports, started and stopped by the tests.
//!
//! PostgreSQL: `initdb` runs once into a template under the system temp dir (guarded by a
//! file lock); each server copies it, which takes a fraction of a second, so every nextest
//! process can afford its own server. As root, postgres runs as the `postgres` user.
//! A watchdog shell stops the servers if the test process dies without cleaning up. Redis
//! is in `redis.rs`, Kafka in `kafka.rs`.

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod kafka;
mod redis;
pub use kafka::KafkaServer;
pub use redis::RedisServer;

const START_ATTEMPTS: usize = 5;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// `program` as the postgres user when we are root (postgres refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn pg_bindir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    candidates.sort();
    if let Some(bin) = candidates.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").exists()))
        .expect(
            "PostgreSQL server binaries (initdb) not found: run `scripts/ensure-deps.sh services`",
        )
}

/// Where servers keep their files: the system temp dir rather than `target/`, because the
/// postgres user must reach it and a checkout under e.g. /root is closed to that user.
fn scratch_root() -> PathBuf {
    let root = std::env::temp_dir().join("api-server-tests");
    fs::create_dir_all(&root).unwrap();
    let _ = fs::set_permissions(&root, fs::Permissions::from_mode(0o1777));
    root
}

/// A directory anyone may write to (the postgres user needs to, even when we are root).
fn shared_tempdir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pg")
        .tempdir_in(scratch_root())
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Kills what the test process started if it dies without running destructors.
fn watchdog(script: &str, args: &[&str]) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 $0 2>/dev/null; do sleep 1; done; {script}"
        ))
        .arg(std::process::id().to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// The initdb'd template, made once per target dir and PostgreSQL version.
fn template(bindir: &Path) -> PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let root = scratch_root().join("pg-template");
            fs::create_dir_all(&root).unwrap();
            fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
            let version = bindir
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned());
            let data = root.join(format!("data-{}", version.unwrap_or_default()));
            let ready = root.join(format!(
                "{}.ready",
                data.file_name().unwrap().to_string_lossy()
            ));
            let lock = File::create(root.join("lock")).unwrap();
            lock.lock().unwrap();
            if !ready.exists() {
                let _ = as_postgres(Path::new("rm")).arg("-rf").arg(&data).status();
                let _ = fs::remove_dir_all(&data);
                let ok = |locale: &str| {
                    as_postgres(&bindir.join("initdb"))
                        .args([
                            "-A",
                            "trust",
                            "-U",
                            "postgres",
                            "-E",
                            "UTF8",
                            "--no-sync",
                            locale,
                            "-D",
                        ])
                        .arg(&data)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                };
                if !ok("--locale=C.UTF-8") {
                    let _ = as_postgres(Path::new("rm")).arg("-rf").arg(&data).status();
                    assert!(ok("--no-locale"), "initdb failed");
                }
                File::create(&ready).unwrap();
            }
            lock.unlock().unwrap();
            data
        })
        .clone()
}

pub struct PgServer {
    /// fsync and full-page writes on, as in production (servers of our own, which tests
    /// crash); the shared server runs without them, for speed.
    durable: bool,
    bindir: PathBuf,
    dir: TempDir,
    data: PathBuf,
    port: u16,
}

impl PgServer {
    /// A new server of our own, durable (for tests that stop or crash it).
    pub fn start() -> Self {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Self {
        let bindir = pg_bindir();
        let template = template(&bindir);
        let dir = shared_tempdir();
        let data = dir.path().join("data");
        let copied = as_postgres(Path::new("cp"))
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()
            .unwrap();
        assert!(copied.success(), "cannot copy the PostgreSQL template");
        let mut server = Self {
            durable,
            bindir,
            dir,
            data,
            port: 0,
        };
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            if server.pg_ctl_start() {
                let stop = format!("{} stop -D \"$1\" -m immediate", server.pg_ctl_cmdline());
                watchdog(
                    &format!("{stop}; rm -rf \"$2\""),
                    &[
                        &server.data.to_string_lossy(),
                        &server.dir.path().to_string_lossy(),
                    ],
                );
                return server;
            }
        }
        panic!(
            "PostgreSQL did not start; see {}",
            server.dir.path().join("pg.log").display()
        );
    }

    /// One server shared by every test of this process (nextest runs one test per process).
    pub fn shared() -> Arc<Self> {
        static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(Self::start_with(false));
        *shared = Arc::downgrade(&server);
        server
    }

    fn pg_ctl_cmdline(&self) -> String {
        let pg_ctl = self.bindir.join("pg_ctl");
        if is_root() {
            format!("runuser -u postgres -- {}", pg_ctl.display())
        } else {
            pg_ctl.display().to_string()
        }
    }

    fn pg_ctl_start(&self) -> bool {
        let durability = if self.durable {
            "-c fsync=on -c full_page_writes=on -c synchronous_commit=on"
        } else {
            "-c fsync=off -c full_page_writes=off"
        };
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} {durability} \
             -c max_connections=300 -c shared_buffers=32MB",
            self.port,
            self.dir.path().display()
        );
        as_postgres(&self.bindir.join("pg_ctl"))
            .args(["start", "-w", "-t", "30", "-o", &options, "-l"])
            .arg(self.dir.path().join("pg.log"))
            .arg("-D")
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn url(&self, database: &str) -> String {
        self.url_via(self.port, database)
    }

    /// The URL of `database` as reached through a proxy on `port`.
    pub fn url_via(&self, port: u16, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{database}")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Immediate shutdown: every backend is killed at once, no checkpoint, and the next
    /// start runs crash recovery from the WAL (a killed pod or a lost node).
    pub fn crash(&self) {
        let status = as_postgres(&self.bindir.join("pg_ctl"))
            .args(["stop", "-w", "-m", "immediate", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl stop -m immediate failed");
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.pg_ctl_start() {
            assert!(Instant::now() < deadline, "PostgreSQL did not restart");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A client program from this server's bindir, connected to it as `postgres`.
    fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres"]);
        cmd
    }

    pub fn create_database(&self) -> String {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let status = self.client("createdb").arg(&name).status().unwrap();
        assert!(status.success(), "createdb failed");
        name
    }

    pub fn drop_database(&self, name: &str) {
        let _ = self
            .client("dropdb")
            .args(["--force", "--if-exists", name])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bindir.join("pg_ctl"))
            .args(["stop", "-w", "-m", "immediate", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Files are owned by postgres; as root, TempDir's own cleanup can remove them.
    }
}
