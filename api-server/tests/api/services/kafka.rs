//! A real Apache Kafka broker (KRaft, broker and controller in one JVM) on free ports.
//!
//! The jars come from Maven Central through `scripts/ensure-deps.sh kafka-home` (installed
//! on first use, cached outside the repo). Formatting a log directory costs a JVM start, so
//! it is done once into a template (under a file lock, like PostgreSQL's) and copied; the
//! controller quorum is static (in server.properties), so a copy is valid on any port.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{START_ATTEMPTS, free_port, scratch_root, watchdog};

/// The cluster id every test broker is formatted with (any 22-character base64 UUID).
const CLUSTER_ID: &str = "c2NhbGFibGUtYXBpLXRlc3Q";

/// The directory holding `libs/` with the broker's jars, installed when missing.
fn kafka_home() -> PathBuf {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ensure-deps.sh");
        let out = Command::new(script)
            .arg("kafka-home")
            .stderr(Stdio::inherit())
            .output()
            .expect("cannot run scripts/ensure-deps.sh kafka-home");
        assert!(
            out.status.success(),
            "scripts/ensure-deps.sh kafka-home failed"
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

fn classpath() -> String {
    format!("{}/libs/*", kafka_home().display())
}

fn properties(log_dir: &Path, port: u16, controller_port: u16) -> String {
    format!(
        "process.roles=broker,controller\n\
         node.id=1\n\
         controller.quorum.voters=1@127.0.0.1:{controller_port}\n\
         listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
         controller.listener.names=CONTROLLER\n\
         inter.broker.listener.name=PLAINTEXT\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
         log.dirs={}\n\
         num.partitions=1\n\
         offsets.topic.replication.factor=1\n\
         offsets.topic.num.partitions=1\n\
         transaction.state.log.replication.factor=1\n\
         transaction.state.log.min.isr=1\n\
         group.initial.rebalance.delay.ms=0\n\
         auto.create.topics.enable=true\n",
        log_dir.display()
    )
}

/// A formatted, never started log directory, made once per machine and Kafka install.
fn template() -> PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let home = kafka_home();
            let name = home.file_name().unwrap().to_string_lossy().into_owned();
            let root = scratch_root().join("kafka-template");
            fs::create_dir_all(&root).unwrap();
            let data = root.join(&name);
            let ready = root.join(format!("{name}.ready"));
            let lock = File::create(root.join("lock")).unwrap();
            lock.lock().unwrap();
            if !ready.exists() {
                let _ = fs::remove_dir_all(&data);
                let config = root.join(format!("{name}.properties"));
                fs::write(&config, properties(&data, 9092, 9093)).unwrap();
                let status = Command::new("java")
                    .args(["-cp", &classpath(), "kafka.tools.StorageTool", "format"])
                    .args(["-t", CLUSTER_ID, "-c"])
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("java not found: run `scripts/ensure-deps.sh kafka`");
                assert!(status.success(), "kafka-storage format failed");
                File::create(&ready).unwrap();
            }
            lock.unlock().unwrap();
            data
        })
        .clone()
}

pub struct KafkaServer {
    dir: TempDir,
    port: u16,
    controller_port: u16,
    child: Mutex<Option<Child>>,
}

impl KafkaServer {
    /// A broker of our own (for tests that kill it).
    pub fn start() -> Self {
        let template = template();
        let dir = tempfile::Builder::new()
            .prefix("kafka")
            .tempdir_in(scratch_root())
            .unwrap();
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(dir.path().join("logs"))
            .status()
            .unwrap();
        assert!(copied.success(), "cannot copy the Kafka log dir template");
        let mut server = Self {
            dir,
            port: 0,
            controller_port: 0,
            child: Mutex::new(None),
        };
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            server.controller_port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!(
            "Kafka did not start; see {}",
            server.dir.path().join("kafka.log").display()
        );
    }

    /// One broker shared by the tests of this process; each test uses its own topic.
    pub fn shared() -> Arc<Self> {
        static SHARED: Mutex<Weak<KafkaServer>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(Self::start());
        *shared = Arc::downgrade(&server);
        server
    }

    /// Starts the JVM on `self.port` and waits until the broker's port accepts connections;
    /// false if it exited first (say, the port was taken meanwhile).
    fn spawn(&self) -> bool {
        let config = self.dir.path().join("server.properties");
        let logs = self.dir.path().join("logs");
        fs::write(&config, properties(&logs, self.port, self.controller_port)).unwrap();
        let log = File::create(self.dir.path().join("kafka.log")).unwrap();
        let mut child = Command::new("java")
            // A small heap and the client compiler: a test broker starts faster this way.
            .args([
                "-Xms128m",
                "-Xmx384m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true",
            ])
            .args(["-cp", &classpath(), "kafka.Kafka"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("java not found: run `scripts/ensure-deps.sh kafka`");
        let deadline = Instant::now() + Duration::from_secs(90);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        watchdog("kill -9 \"$1\" 2>/dev/null", &[&child.id().to_string()]);
        *self.child.lock().unwrap() = Some(child);
        true
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the broker vanishes mid-stream, as on a lost node.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and log directory (its messages survive).
    pub fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "Kafka did not restart");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        self.kill();
    }
}
