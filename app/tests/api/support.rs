//! Test harness: real Postgres (two shards, each a primary plus a streaming replica, both run by
//! the `scaled-instance` manager with SCRAM passwords, as in a pod) and a real redis-server, on
//! free loopback ports in temporary directories.
//!
//! One shared stack serves most tests (each test gets its own database, cloned from a migrated
//! template, and its own Redis database number); fault tests start stacks of their own. Every
//! stack has a watchdog process that stops it when the test binary exits, because a `static`
//! is never dropped. Postgres refuses to run as root, so as root the servers run as the
//! unprivileged user `scaledtest` (created on first use).
//!
//! The app connects as the `app` role with [`APP_PASSWORD`]; set-up (creating databases) uses the
//! superuser over the Unix socket, the only way the manager's `pg_hba.conf` lets it in. The
//! manager binary is `target/<profile>/scaled-instance` (built by `make unit`, or
//! `cargo build -p scaled-instance`), or `$SCALED_INSTANCE_BIN`.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use scaled_app::{
    config::{RequestLimits, RoutePolicy, Settings},
    db::MIGRATOR,
    http::AppState,
    startup::Application,
};
use scaled_contract::{RuntimeConfig, Secret, ShardEndpoints, instance::pod_name, slot_for_key};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool, postgres::PgConnectOptions};
use tokio_util::sync::CancellationToken;

const SERVICE_USER: &str = "scaledtest";
const TEMPLATE_DATABASE: &str = "template_app";
/// Password of the `app` role on every test server.
pub const APP_PASSWORD: &str = "app-test-password";
const SUPERUSER_PASSWORD: &str = "superuser-test-password";
const REPLICATION_PASSWORD: &str = "replication-test-password";
/// How long a shard may take to come up on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// The instance manager's executable.
fn instance_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Ok(path) = std::env::var("SCALED_INSTANCE_BIN") {
                return PathBuf::from(path);
            }
            // target/<profile>/deps/api-<hash> -> target/<profile>/scaled-instance
            let test_binary = std::env::current_exe().expect("the test binary's path");
            let candidate = test_binary
                .parent()
                .and_then(Path::parent)
                .map(|profile| profile.join("scaled-instance"))
                .expect("the test binary lives in target/<profile>/deps");
            assert!(
                candidate.is_file(),
                "the Postgres instance manager is missing at {}: run `cargo build -p \
                 scaled-instance` first (`make unit` does), or set SCALED_INSTANCE_BIN",
                candidate.display()
            );
            candidate
        })
        .clone()
}

fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// `(uid, gid)` of the service user when running as root (creating the user first).
fn service_ids() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    create_service_user();
    let id = |flag: &str| {
        Command::new("id")
            .arg(flag)
            .arg(SERVICE_USER)
            .output()
            .ok()
            .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
            .expect("the service user has ids")
    };
    Some((id("-u"), id("-g")))
}

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{what}: cannot run: {error}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn create_service_user() {
    static USER: OnceLock<()> = OnceLock::new();
    USER.get_or_init(|| {
        let exists = Command::new("id")
            .arg("-u")
            .arg(SERVICE_USER)
            .output()
            .is_ok_and(|output| output.status.success());
        if !exists {
            run(
                Command::new("useradd").args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    SERVICE_USER,
                ]),
                "create the test service user",
            );
        }
    });
}

fn prepare_directory(dir: &Path) {
    if !is_root() {
        return;
    }
    create_service_user();
    run(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{SERVICE_USER}:"))
            .arg(dir),
        "chown the stack directory",
    );
}

/// A free loopback port, never one handed out before in this process (the listener is closed
/// again; a race with another process is unlikely).
pub fn free_port() -> u16 {
    // The kernel may hand the same port to two binds in a row once the first is closed, and
    // two servers of one test cluster then fight over it (a replica's postgres found its
    // primary on "its" port). Never hand a port out twice in this process.
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().expect("the port list is never poisoned");
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free loopback port");
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// One Postgres server: a `scaled-instance run` process (and its postgres) in a process group
/// of its own.
pub struct Postgres {
    data: PathBuf,
    socket_dir: PathBuf,
    process: Mutex<Option<Child>>,
    group: i32,
    /// Loopback port.
    pub port: u16,
}

impl Postgres {
    /// Starts pod `<shard>-<ordinal>` of a shard whose record names `<shard>-0` primary.
    fn spawn(dir: &Path, shard: &str, ordinal: u32, ports: &[(u16, u16)]) -> Self {
        let pod = pod_name(shard, ordinal);
        let volume = dir.join(&pod);
        let socket_dir = dir.join(format!("{pod}-socket"));
        std::fs::create_dir_all(&volume).expect("create the volume directory");
        std::fs::create_dir_all(&socket_dir).expect("create the socket directory");
        let record = dir.join(format!("{shard}.primary"));
        std::fs::write(&record, format!("{}\n", pod_name(shard, 0)))
            .expect("write the primary record");
        let (port, status_port) = ports[ordinal as usize];
        let config = json!({
            "schemaVersion": 1,
            "scaledApp": "apptest",
            "dataDir": volume.join("pgdata"),
            "binDir": std::env::var("SCALED_PG_BIN").ok(),
            "database": "app",
            "appUser": "app",
            "replicationUser": "replicator",
            "instances": ports.len(),
            "parameters": {
                "fsync": "off",
                "full_page_writes": "off",
                "max_connections": "400",
                "shared_buffers": "32MB",
                "max_wal_senders": "10",
                "log_min_messages": "warning",
            },
            "synchronousReplication": false,
            "fenceAfterSeconds": 3600,
            "postgresPort": port,
            "statusPort": status_port,
        });
        let config_path = dir.join(format!("{pod}.json"));
        std::fs::write(&config_path, config.to_string()).expect("write the instance config");
        prepare_directory(&volume);
        prepare_directory(&socket_dir);
        let log = std::fs::File::create(dir.join(format!("{pod}.log"))).expect("create the log");
        let mut command = Command::new(instance_binary());
        if let Some((uid, gid)) = service_ids() {
            command.uid(uid).gid(gid);
        }
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--primary-file")
            .arg(&record)
            .arg("--socket-dir")
            .arg(&socket_dir)
            .args([
                "--http-address",
                "127.0.0.1",
                "--listen-addresses",
                "127.0.0.1",
            ])
            .args(["--tick-ms", "250"]);
        for (other, (other_port, _)) in ports.iter().enumerate() {
            command.arg("--peer").arg(format!(
                "{}=127.0.0.1:{other_port}",
                pod_name(shard, other as u32)
            ));
        }
        let child = command
            .env("SCALED_POD_NAME", &pod)
            .env("SCALED_NAMESPACE", "apptest")
            .env("SCALED_SHARD", "0")
            .env("SCALED_SUPERUSER_PASSWORD", SUPERUSER_PASSWORD)
            .env("SCALED_REPLICATION_PASSWORD", REPLICATION_PASSWORD)
            .env("SCALED_DATABASE_PASSWORD", APP_PASSWORD)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start scaled-instance");
        let group = child.id() as i32;
        Postgres {
            data: volume.join("pgdata"),
            socket_dir,
            process: Mutex::new(Some(child)),
            group,
            port,
        }
        .wait_ready(status_port, &pod, dir)
    }

    fn wait_ready(self, status_port: u16, pod: &str, dir: &Path) -> Self {
        let deadline = Instant::now() + START_TIMEOUT;
        while !http_ok(status_port, "/readyz") {
            let exited = self
                .process
                .lock()
                .expect("process lock")
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            let log =
                || std::fs::read_to_string(dir.join(format!("{pod}.log"))).unwrap_or_default();
            assert!(
                exited.is_none(),
                "{pod}'s instance manager exited: {exited:?}\n{}",
                log()
            );
            assert!(
                Instant::now() < deadline,
                "{pod} did not become ready\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self
    }

    /// Stops the server at once (like a crash): an immediate shutdown, which ends every backend
    /// (they run in sessions of their own, out of reach of a signal to the manager's group),
    /// then the manager is killed.
    pub fn stop(&self) {
        if let Some(postmaster) = self.postmaster_pid() {
            let _ = Command::new("kill")
                .args(["-s", "QUIT", &postmaster.to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Path::new(&format!("/proc/{postmaster}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // `--` and `-s`: procps kill reads `-9 -<pgid>` differently and signals nothing.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.group)])
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.process.lock().expect("process lock").take() {
            let _ = child.wait();
        }
    }

    fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Makes a replica apply WAL only after `delay` (replication lag on demand).
    pub fn set_apply_delay(&self, delay: Duration) {
        // After the include of the manager's settings, so it wins.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(file, "recovery_min_apply_delay = '{}ms'", delay.as_millis())
            .expect("append the delay");
        let postmaster = self.postmaster_pid().expect("postgres runs");
        run(
            Command::new("kill").args(["-s", "HUP", &postmaster.to_string()]),
            "reload postgres",
        );
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn stop_command(&self) -> String {
        format!("kill -9 -{} 2>/dev/null", self.group)
    }
}

/// Whether `GET path` on the loopback `port` answers 200.
fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

/// One redis-server.
pub struct RedisServer {
    child: Mutex<Option<Child>>,
    dir: PathBuf,
    /// Loopback port.
    pub port: u16,
}

impl RedisServer {
    fn new(dir: &Path) -> Self {
        let server = Self::stopped(dir);
        server.start();
        server
    }

    /// A server on a free port of its own, not started yet: a client pointed at it finds nothing
    /// listening until [`RedisServer::start`].
    pub fn stopped(dir: &Path) -> Self {
        RedisServer {
            child: Mutex::new(None),
            dir: dir.to_path_buf(),
            port: free_port(),
        }
    }

    /// Starts (or restarts) the server on its port and waits for it.
    pub fn start(&self) {
        let child = Command::new("redis-server")
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
            .args(["--databases", "256", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        *self.child.lock().expect("redis child lock") = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().expect("redis child lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis://127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: u32) -> String {
        format!("redis://127.0.0.1:{}/{database}", self.port)
    }

    fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .expect("redis child lock")
            .as_ref()
            .map(Child::id)
    }
}

impl RedisServer {
    /// A command to this server, over a connection of its own.
    pub fn command<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let client = redis::Client::open(self.url(0)).expect("a redis url");
        let mut connection = client.get_connection().expect("connect to redis");
        command.query(&mut connection).expect("a redis command")
    }

    /// Makes this server a replica of `primary` and waits until it has synchronised.
    pub fn replicate(&self, primary: &RedisServer) {
        // Redis waits 5 s by default for more replicas before a full sync without disk.
        primary.command::<()>(
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("repl-diskless-sync-delay")
                .arg(0),
        );
        self.command::<()>(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(primary.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .command::<String>(redis::cmd("INFO").arg("replication"))
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "the replica did not synchronise");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes this server a primary (`REPLICAOF NO ONE`).
    pub fn promote(&self) {
        self.command::<()>(redis::cmd("REPLICAOF").arg("NO").arg("ONE"));
    }
}

/// A Redis primary and its replica, each a redis-server of its own.
pub struct RedisPair {
    /// Takes the writes.
    pub primary: RedisServer,
    /// Replicates the primary.
    pub replica: RedisServer,
    _dir: tempfile::TempDir,
}

impl RedisPair {
    /// Starts both servers and waits until the replica has synchronised.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("scaled-app-redis-")
            .tempdir()
            .expect("create a temporary directory");
        let primary = RedisServer::new(dir.path());
        let replica = RedisServer::new(dir.path());
        replica.replicate(&primary);
        RedisPair {
            primary,
            replica,
            _dir: dir,
        }
    }
}

/// A TCP forwarder standing in for a Kubernetes Service: each new connection goes to the port it
/// currently points at, and connections made earlier stay with the server they reached.
pub struct Forwarder {
    /// Where clients connect.
    pub port: u16,
    target: Arc<AtomicU32>,
    /// Bumped by [`Forwarder::blackhole_existing`]; each connection watches it.
    cuts: tokio::sync::watch::Sender<u64>,
}

/// The two ends of a connection [`Forwarder::blackhole_existing`] cut: kept open, never read.
type HeldOpen = Arc<Mutex<Vec<(tokio::net::TcpStream, tokio::net::TcpStream)>>>;

impl Forwarder {
    /// Forwards to `target` until the test's runtime ends.
    pub async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the forwarder");
        let port = listener.local_addr().expect("its address").port();
        let target = Arc::new(AtomicU32::new(u32::from(target)));
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let to = target.clone();
        let watch = cuts.clone();
        let held: HeldOpen = Arc::default();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let port = to.load(Ordering::SeqCst) as u16;
                let mut cut = watch.subscribe();
                cut.mark_unchanged();
                let held = held.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {
                            held.lock().expect("held lock").push((inbound, outbound));
                        }
                    }
                });
            }
        });
        Forwarder { port, target, cuts }
    }

    /// Stops carrying bytes on every connection open now, in both directions, without closing
    /// either end: like a server whose pod was deleted or cut off the network, from which no
    /// reset ever comes. New connections are forwarded as before.
    pub fn blackhole_existing(&self) {
        self.cuts.send_modify(|generation| *generation += 1);
    }

    /// New connections go to `target` from now on.
    pub fn point_at(&self, target: u16) {
        self.target.store(u32::from(target), Ordering::SeqCst);
    }

    /// `redis://127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: u32) -> String {
        format!("redis://127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Primary and replica of one shard.
pub struct ShardServers {
    /// Read-write primary.
    pub primary: Postgres,
    /// Streaming replica.
    pub replica: Postgres,
}

/// Two shards and a Redis.
pub struct Stack {
    dir: PathBuf,
    /// Shards by index.
    pub shards: Vec<ShardServers>,
    /// Redis.
    pub redis: RedisServer,
    watchdog: Mutex<Option<Child>>,
}

impl Stack {
    /// The stack shared by all tests of this binary.
    pub fn shared() -> &'static Stack {
        static SHARED: OnceLock<Stack> = OnceLock::new();
        SHARED.get_or_init(Stack::start)
    }

    /// A new stack (for tests that break things).
    pub fn start() -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("scaled-app-test-")
            .tempdir()
            .expect("create a temporary directory")
            .keep();
        prepare_directory(&dir);
        let shards: Vec<ShardServers> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|index| {
                    let dir = &dir;
                    scope.spawn(move || {
                        let shard = format!("shard{index}");
                        let ports = [(free_port(), free_port()), (free_port(), free_port())];
                        let primary = Postgres::spawn(dir, &shard, 0, &ports);
                        let replica = Postgres::spawn(dir, &shard, 1, &ports);
                        ShardServers { primary, replica }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("shard start-up"))
                .collect()
        });
        let redis = RedisServer::new(&dir);
        let stack = Stack {
            dir,
            shards,
            redis,
            watchdog: Mutex::new(None),
        };
        stack.arm_watchdog();
        stack.create_template();
        stack
    }

    /// Stops everything when this process is gone, however it ended.
    fn arm_watchdog(&self) {
        let mut cleanup: Vec<String> = self
            .shards
            .iter()
            .flat_map(|shard| [shard.replica.stop_command(), shard.primary.stop_command()])
            .collect();
        if let Some(pid) = self.redis.pid() {
            cleanup.push(format!("kill -9 {pid} 2>/dev/null"));
        }
        cleanup.push(format!("rm -rf {}", self.dir.display()));
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; {}",
            std::process::id(),
            cleanup.join("; ")
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the watchdog");
        *self.watchdog.lock().expect("watchdog lock") = Some(child);
    }

    fn create_template(&self) {
        // On a thread of its own: the caller may be inside an async test, where a nested
        // runtime may not block.
        std::thread::scope(|scope| {
            scope
                .spawn(|| self.create_template_blocking())
                .join()
                .expect("template set-up");
        });
    }

    fn create_template_blocking(&self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for set-up");
        runtime.block_on(async {
            for shard in &self.shards {
                let mut admin = connect_admin(&shard.primary).await;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE {TEMPLATE_DATABASE} OWNER app"
                )))
                .execute(&mut admin)
                .await
                .expect("create the template database");
                let mut template = connect(&shard.primary, TEMPLATE_DATABASE).await;
                MIGRATOR
                    .run(&mut template)
                    .await
                    .expect("migrate the template");
                template
                    .close()
                    .await
                    .expect("close the template connection");
            }
        });
    }

    /// The endpoints of every shard.
    pub fn endpoints(&self) -> Vec<ShardEndpoints> {
        self.shards
            .iter()
            .enumerate()
            .map(|(index, shard)| ShardEndpoints {
                index: index as u32,
                primary: shard.primary.address(),
                replicas: vec![shard.replica.address()],
            })
            .collect()
    }

    /// A fresh database on every shard, cloned from the migrated template, visible on the
    /// replicas before this returns.
    pub async fn create_database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        // CREATE DATABASE ... TEMPLATE needs the template to be idle; one at a time.
        static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let _guard = CREATING.lock().await;
        for shard in &self.shards {
            let mut admin = connect_admin(&shard.primary).await;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {name} TEMPLATE {TEMPLATE_DATABASE} OWNER app"
            )))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        }
        for shard in &self.shards {
            let deadline = Instant::now() + Duration::from_secs(20);
            while PgConnection::connect_with(&options(&shard.replica, &name))
                .await
                .is_err()
            {
                assert!(
                    Instant::now() < deadline,
                    "the replica never saw database {name}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        name
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for shard in &self.shards {
            shard.replica.stop();
            shard.primary.stop();
        }
        self.redis.stop();
        if let Some(mut watchdog) = self.watchdog.lock().expect("watchdog lock").take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn options(server: &Postgres, database: &str) -> PgConnectOptions {
    PgConnectOptions::new()
        .host("127.0.0.1")
        .port(server.port)
        .username("app")
        .password(APP_PASSWORD)
        .database(database)
}

/// The superuser over the Unix socket (it may not log in over TCP).
async fn connect_admin(server: &Postgres) -> PgConnection {
    let options = PgConnectOptions::new()
        .socket(&server.socket_dir)
        .port(server.port)
        .username("postgres")
        .password(SUPERUSER_PASSWORD)
        .database("postgres");
    PgConnection::connect_with(&options)
        .await
        .expect("connect to a test server as the superuser")
}

async fn connect(server: &Postgres, database: &str) -> PgConnection {
    PgConnection::connect_with(&options(server, database))
        .await
        .expect("connect to a test server")
}

/// The Redis database number for the next test (0 is left unused).
fn next_redis_database() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let number = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(
        number < 256,
        "more tests than Redis databases; raise --databases"
    );
    number
}

/// A test configuration: small pools, generous Redis budgets (a loaded CI machine must not turn
/// cache lookups into misses), fast queue timings.
pub fn test_config(stack: &Stack, database: &str, redis_database: u32) -> RuntimeConfig {
    let mut config =
        RuntimeConfig::local(stack.endpoints(), &stack.redis.url(redis_database), 1024)
            .expect("valid config");
    config.http_port = 0;
    config.metrics_port = 0;
    config.database.name = database.to_string();
    config.database.pool_size = 1;
    config.database.max_overflow = 15;
    config.database.acquire_timeout_ms = 2_000;
    config.cache.redis_timeout_ms = 1_000;
    config.rate_limit.limit = 10;
    config.queues.claim_idle_ms = 1_500;
    config.queues.retry_backoff_ms = 100;
    config.queues.max_attempts = 3;
    config
}

/// Route limits no test meets by accident: every test request comes from 127.0.0.1, and some
/// tests create dozens of users. Tests of the limits set their own.
pub fn unlimited_routes() -> RequestLimits {
    let unlimited = RoutePolicy {
        requests: 1_000_000,
        window: Duration::from_secs(1),
    };
    RequestLimits {
        sign_in: unlimited,
        sign_up: unlimited,
        orders: unlimited,
    }
}

/// One running app (serve mode, in process) with its own database and Redis database.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// `http://127.0.0.1:<metrics port>`.
    pub metrics_address: String,
    /// Client without redirects or cookies (tests handle cookies explicitly).
    pub client: reqwest::Client,
    /// The document the app runs with.
    pub config: RuntimeConfig,
    /// The app's state (cluster, cache, metrics).
    pub state: AppState,
    redis_url: String,
    shutdown: CancellationToken,
    /// Read-your-writes tokens of every write made through this app's helpers, merged per shard
    /// (what a browser's cookie jar would hold).
    tokens: Mutex<std::collections::BTreeMap<u32, (u64, String)>>,
    /// Session ids by user id (see [`TestApp::session_of`]).
    sessions: Mutex<std::collections::HashMap<i64, String>>,
}

impl TestApp {
    /// An app on the shared stack.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// An app on the shared stack with a tweaked config.
    pub async fn spawn_with(tweak: impl FnOnce(&mut RuntimeConfig)) -> TestApp {
        Self::spawn_tuned(tweak, |_| {}).await
    }

    /// An app on the shared stack with a tweaked config and tweaked process settings.
    pub async fn spawn_tuned(
        tweak: impl FnOnce(&mut RuntimeConfig),
        tweak_settings: impl FnOnce(&mut Settings),
    ) -> TestApp {
        let stack = Stack::shared();
        let database = stack.create_database().await;
        let mut config = test_config(stack, &database, next_redis_database());
        tweak(&mut config);
        Self::spawn_settings(config, tweak_settings).await
    }

    /// A second app (another "pod") sharing this one's database and Redis.
    pub async fn another_pod(&self) -> TestApp {
        Self::spawn_config(self.config.clone()).await
    }

    /// An app running `config`.
    pub async fn spawn_config(config: RuntimeConfig) -> TestApp {
        Self::spawn_settings(config, |_| {}).await
    }

    /// An app running `config`, with process settings tweaked.
    pub async fn spawn_settings(
        config: RuntimeConfig,
        tweak: impl FnOnce(&mut Settings),
    ) -> TestApp {
        let app = Self::start_settings(config, tweak).await;
        // L1 only fills once the invalidation subscription is up; wait so tests are deterministic.
        app.wait_until_subscribed().await;
        // The kubelet sends a pod traffic only once `/ready` said yes; so do the tests.
        app.wait_until_ready().await;
        app
    }

    /// An app running `config`, serving at once: not waited for (tests of start-up itself).
    pub async fn start_config(config: RuntimeConfig) -> TestApp {
        Self::start_settings(config, |_| {}).await
    }

    async fn start_settings(config: RuntimeConfig, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = Settings::from_runtime(config.clone(), Secret::new(SESSION_SECRET));
        settings.limits = unlimited_routes();
        tweak(&mut settings);
        settings.database_password = Some(Secret::new(APP_PASSWORD));
        let application = Application::build(settings).await.expect("the app starts");
        let address = format!("http://{}", application.http_addr());
        let metrics_address = format!("http://{}", application.metrics_addr());
        let state = application.state().clone();
        let shutdown = CancellationToken::new();
        tokio::spawn(application.run_until_stopped(shutdown.clone()));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a client");
        TestApp {
            address,
            metrics_address,
            client,
            redis_url: config.redis.url.clone(),
            config,
            state,
            shutdown,
            tokens: Mutex::new(std::collections::BTreeMap::new()),
            sessions: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Fails the test if `/ready` does not answer 200 in time.
    pub async fn wait_until_ready(&self) {
        eventually(
            "the app to report ready",
            Duration::from_secs(30),
            || async {
                (self.get("/ready").await.status() == reqwest::StatusCode::OK).then_some(())
            },
        )
        .await;
    }

    /// Fails the test if the pod does not subscribe in time: a test that went on without the
    /// subscription would test an app whose L1 is off.
    async fn wait_until_subscribed(&self) {
        let cache = self.state.cache.clone();
        eventually(
            "the app to subscribe to cache invalidations",
            Duration::from_secs(30),
            || {
                let cache = cache.clone();
                async move { cache.is_subscribed().then_some(()) }
            },
        )
        .await;
    }

    /// Waits until every shard primary's pool holds an idle connection (poolSize connections
    /// stay open), so a short acquire timeout measures queueing, not a connection set-up (SCRAM,
    /// a backend fork) on a loaded machine.
    pub async fn wait_for_standing_connections(&self) {
        for shard in &self.state.cluster.topology().shards {
            eventually(
                "the pool's standing connection",
                Duration::from_secs(30),
                || async { (shard.primary.num_idle() >= 1).then_some(()) },
            )
            .await;
        }
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        let response = self
            .client
            .post(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("request sent");
        self.remember_token(&response);
        response
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        let response = self
            .client
            .put(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("request sent");
        self.remember_token(&response);
        response
    }

    fn remember_token(&self, response: &reqwest::Response) {
        let Some(text) = response
            .headers()
            .get("x-consistency-token")
            .and_then(|value| value.to_str().ok())
        else {
            return;
        };
        // Parts are signed (`<shard>.<lsn>.<mac>`): keep each one whole, the newest per shard.
        let mut tokens = self.tokens.lock().expect("token lock");
        for part in text.split('-') {
            let mut fields = part.split('.');
            if let (Some(Ok(shard)), Some(Ok(lsn))) = (
                fields.next().map(str::parse::<u32>),
                fields.next().map(str::parse::<u64>),
            ) {
                let entry = tokens.entry(shard).or_insert((0, String::new()));
                if lsn >= entry.0 {
                    *entry = (lsn, part.to_string());
                }
            }
        }
    }

    /// `GET path` carrying the tokens of this app's earlier writes (read-your-writes).
    pub async fn get_consistent(&self, path: &str) -> reqwest::Response {
        let token = self
            .tokens
            .lock()
            .expect("token lock")
            .values()
            .map(|(_, part)| part.clone())
            .collect::<Vec<_>>()
            .join("-");
        self.client
            .get(format!("{}{path}", self.address))
            .header("x-consistency-token", token)
            .send()
            .await
            .expect("request sent")
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent")
    }

    /// Creates a user with a unique email and [`PASSWORD`], and returns it (the private
    /// representation, with the email, and the sign-up's `message`).
    pub async fn create_user(&self) -> Value {
        let email = format!("user-{}@example.org", hex_token());
        let response = self
            .post(
                "/api/users",
                &json!({ "name": "Test User", "email": email, "password": PASSWORD }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let user: Value = response.json().await.expect("a JSON user");
        assert!(user["id"].is_i64(), "a new address gets an account: {user}");
        user
    }

    /// Signs `email` up with [`PASSWORD`]: the new account's id, or `None` when the address was
    /// already registered (sign-up answers 202 either way).
    pub async fn sign_up(&self, name: &str, email: &str) -> Option<i64> {
        let response = self
            .post(
                "/api/users",
                &json!({ "name": name, "email": email, "password": PASSWORD }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.expect("a JSON answer");
        body["id"].as_i64()
    }

    /// Signs in as `user` (made by [`TestApp::create_user`]) and returns the session id; one
    /// sign-in per user and app, reused afterwards.
    pub async fn session_of(&self, user: &Value) -> String {
        let id = user["id"].as_i64().expect("a user id");
        if let Some(session) = self.sessions.lock().expect("session lock").get(&id) {
            return session.clone();
        }
        let response = self
            .client
            .post(format!("{}/api/sessions", self.address))
            .json(&json!({ "email": user["email"], "password": PASSWORD }))
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), StatusCode::CREATED, "sign-in");
        let session = session_cookie(&response).expect("a session cookie");
        self.sessions
            .lock()
            .expect("session lock")
            .insert(id, session.clone());
        session
    }

    /// `method path` with a JSON body, as `user` (signed in with [`TestApp::session_of`]).
    pub async fn send_as(
        &self,
        user: &Value,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> reqwest::Response {
        let session = self.session_of(user).await;
        let response = self
            .client
            .request(method, format!("{}{path}", self.address))
            .header(reqwest::header::COOKIE, format!("sid={session}"))
            .json(body)
            .send()
            .await
            .expect("request sent");
        self.remember_token(&response);
        response
    }

    /// `GET path` as `user` (with its session, without read-your-writes tokens).
    pub async fn get_as(&self, user: &Value, path: &str) -> reqwest::Response {
        let session = self.session_of(user).await;
        self.client
            .get(format!("{}{path}", self.address))
            .header(reqwest::header::COOKIE, format!("sid={session}"))
            .send()
            .await
            .expect("request sent")
    }

    /// `PUT path` as `user`.
    pub async fn put_as(&self, user: &Value, path: &str, body: &Value) -> reqwest::Response {
        self.send_as(user, reqwest::Method::PUT, path, body).await
    }

    /// Creates a user on shard `shard`.
    pub async fn create_user_on(&self, shard: u32) -> Value {
        loop {
            let user = self.create_user().await;
            if self.shard_of(user["id"].as_i64().expect("an id")) == shard {
                return user;
            }
        }
    }

    /// Which shard a user id lives on.
    pub fn shard_of(&self, id: i64) -> u32 {
        let map = &self.config.shard_map;
        map.assignment()[slot_for_key(&id.to_string(), map.slots) as usize]
    }

    /// Places an order as `user` and returns it.
    pub async fn create_order(&self, user: &Value) -> Value {
        let body = json!({ "items": [{ "sku": "sku-1", "quantity": 2 }], "total": 19.98 });
        let response = self
            .send_as(user, reqwest::Method::POST, "/api/orders", &body)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.expect("a JSON order")
    }

    /// The sum of every sample of `name` whose labels contain all of `labels` (`key="value"`).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.metrics_address))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|line| line.starts_with(name) && !line.starts_with('#'))
            .filter(|line| line[name.len()..].starts_with(['{', ' ']))
            .filter(|line| labels.iter().all(|label| line.contains(label)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// A pool on the primary of `shard`, for assertions.
    pub async fn primary(&self, shard: u32) -> PgPool {
        let server = &Stack::shared().shards[shard as usize].primary;
        self.pool_on(server)
    }

    /// A pool on an arbitrary server of some stack, for this app's database.
    pub fn pool_on(&self, server: &Postgres) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(options(server, &self.config.database.name))
    }

    /// A connection to this app's Redis database.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .expect("a redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The password of every user [`TestApp::create_user`] makes.
pub const PASSWORD: &str = "correct horse battery staple";
/// The session secret of test apps (session keys in Redis are hashed with it).
pub const SESSION_SECRET: &str = "test-session-secret";

/// The public representation of a user as [`TestApp::create_user`] returned it.
pub fn public(user: &Value) -> Value {
    json!({ "id": user["id"], "name": user["name"], "created_at": user["created_at"] })
}

/// The session id a response sets, if it sets one.
pub fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| value.strip_prefix("sid="))
        .and_then(|rest| rest.split(';').next())
        .filter(|value| !value.is_empty())
        .map(str::to_string)
}

/// Sixteen random hex characters.
pub fn hex_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stack of its own, shared by `Arc` between an app and the test body.
pub fn own_stack() -> Arc<Stack> {
    Arc::new(Stack::start())
}

/// An app on `stack` with its own database.
pub async fn app_on(stack: &Stack, tweak: impl FnOnce(&mut RuntimeConfig)) -> TestApp {
    let database = stack.create_database().await;
    let mut config = test_config(stack, &database, 1);
    tweak(&mut config);
    TestApp::spawn_config(config).await
}

/// The Redis key of the session a cookie value names (a token's id is its second field).
pub fn session_key(cookie: &str) -> String {
    let id = match cookie.strip_prefix("v3.") {
        Some(rest) => rest.split('.').next().expect("an id"),
        None => cookie,
    };
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(SESSION_SECRET.as_bytes());
    hasher.update(id.as_bytes());
    format!("session:v2:{}", hex::encode(hasher.finalize()))
}

/// An app on the shared Postgres with a Redis of its own, running, so that a test can stop and
/// restart it without touching other tests' Redis. Drop order (app, server, directory) stops the
/// app first and removes the directory last.
pub async fn app_with_own_redis(
    tweak: impl FnOnce(&mut RuntimeConfig),
) -> (TestApp, RedisServer, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("scaled-app-redis-")
        .tempdir()
        .expect("create a temporary directory");
    let redis = RedisServer::stopped(dir.path());
    redis.start();
    let stack = Stack::shared();
    let database = stack.create_database().await;
    let mut config = test_config(stack, &database, 0);
    config.redis.url = redis.url(0);
    tweak(&mut config);
    (TestApp::spawn_config(config).await, redis, dir)
}
