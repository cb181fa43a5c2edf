//! Test harness: the real `scaled-instance` binary managing real Postgres servers as host
//! processes, on free loopback ports in a temporary directory, with the primary record in a file.
//!
//! Each manager runs in a process group of its own; dropping its [`Node`] kills the group
//! (manager, postgres, any tool), and a watchdog does the same if the test binary dies. Postgres
//! refuses to run as root, so as root the managers run as the unprivileged user `scaledtest`
//! (created on first use, the same one the app's tests use).

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};
use scaled_contract::instance::{
    ENV_APP_PASSWORD, ENV_INSTANCE_NAMESPACE, ENV_INSTANCE_POD, ENV_INSTANCE_SHARD,
    ENV_REPLICATION_PASSWORD, ENV_SUPERUSER_PASSWORD, IDENTITY_FILE, InstanceConfig, InstanceRole,
    InstanceStatus, pod_name,
};
use tokio_postgres::{Client, NoTls};

/// The test user Postgres runs as when the tests run as root.
const SERVICE_USER: &str = "scaledtest";
/// Namespace in every identity.
pub const NAMESPACE: &str = "tests";
/// ScaledApp name in every identity.
pub const SCALED_APP: &str = "shop";
/// The StatefulSet every test pod belongs to: pods are `db-0`, `db-1`, ...
pub const STATEFUL_SET: &str = "db";
/// Passwords of every test cluster.
pub const SUPERUSER_PASSWORD: &str = "super-Secret-7e1";
/// Replication role's password.
pub const REPLICATION_PASSWORD: &str = "repl-Secret-9c4";
/// Application role's password.
pub const APP_PASSWORD: &str = "app-Secret-2b8";
/// Application role and database.
pub const APP_USER: &str = "app";
/// Replication role.
pub const REPLICATION_USER: &str = "replicator";

/// Generous: the machine is shared and builds run beside the tests.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// `(uid, gid)` of the service user when running as root.
fn service_ids() -> Option<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDS.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let lookup = |flag: &str| {
            Command::new("id")
                .arg(flag)
                .arg(SERVICE_USER)
                .output()
                .ok()
                .filter(|output| output.status.success())
                .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        };
        if lookup("-u").is_none() {
            let status = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    SERVICE_USER,
                ])
                .status()
                .expect("useradd runs");
            // Another test binary may have created it at the same time.
            assert!(
                status.success() || lookup("-u").is_some(),
                "create the test service user"
            );
        }
        Some((
            lookup("-u").expect("the service user has a uid"),
            lookup("-g").expect("the service user has a gid"),
        ))
    })
}

/// Gives `path` (recursively) to the service user when running as root.
pub fn give_to_service_user(path: &Path) {
    if let Some((uid, gid)) = service_ids() {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path)
            .status()
            .expect("chown runs");
        assert!(status.success(), "chown {}", path.display());
    }
}

/// A command run as the service user when we are root.
pub fn as_service_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    if let Some((uid, gid)) = service_ids() {
        command.uid(uid).gid(gid);
    }
    command
}

/// A free loopback port, never one handed out before in this process (closed again at once; a
/// race with another process is unlikely).
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

/// The Postgres binaries used for test set-up (initdb of foreign directories, pg_controldata).
pub fn pg_bin(tool: &str) -> PathBuf {
    let dir =
        std::env::var("SCALED_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    Path::new(&dir).join(tool)
}

/// Choices for a test cluster.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pods in the StatefulSet.
    pub instances: u32,
    /// Extra Postgres parameters.
    pub parameters: Vec<(&'static str, &'static str)>,
    /// fenceAfterSeconds.
    pub fence_after_seconds: u32,
    /// recloneAfterSeconds.
    pub reclone_after_seconds: u32,
    /// cloneMaxRateKibPerSecond.
    pub clone_max_rate: Option<u32>,
    /// database.synchronousReplication.
    pub synchronous_replication: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            instances: 1,
            parameters: Vec::new(),
            fence_after_seconds: 30,
            reclone_after_seconds: 60,
            clone_max_rate: None,
            synchronous_replication: false,
        }
    }
}

/// One pod's fixed facts.
#[derive(Clone, Debug)]
pub struct Pod {
    /// `db-<ordinal>`.
    pub name: String,
    /// Postgres port.
    pub postgres_port: u16,
    /// Status port.
    pub status_port: u16,
    /// Its volume (parent of the data directory).
    pub volume: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its socket directory.
    pub socket_dir: PathBuf,
    /// Its manager's log.
    pub log: PathBuf,
    /// Its config file.
    pub config_path: PathBuf,
}

/// A StatefulSet's worth of pods sharing a primary record file.
pub struct Cluster {
    dir: PathBuf,
    /// The primary record.
    pub record: PathBuf,
    /// Pods by ordinal.
    pub pods: Vec<Pod>,
    options: Options,
}

impl Cluster {
    /// Lays out the directories and config files; starts nothing.
    pub fn new(options: Options) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("si-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        let pods = (0..options.instances)
            .map(|ordinal| {
                let name = pod_name(STATEFUL_SET, ordinal);
                let volume = dir.join(format!("vol{ordinal}"));
                let socket_dir = dir.join(format!("run{ordinal}"));
                fs::create_dir_all(&volume).expect("create the volume");
                fs::create_dir_all(&socket_dir).expect("create the socket directory");
                Pod {
                    data_dir: volume.join("pgdata"),
                    log: dir.join(format!("{name}.log")),
                    config_path: dir.join(format!("{name}.json")),
                    name,
                    postgres_port: free_port(),
                    status_port: free_port(),
                    volume,
                    socket_dir,
                }
            })
            .collect();
        let cluster = Cluster {
            record: dir.join("primary"),
            dir,
            pods,
            options,
        };
        for ordinal in 0..cluster.pods.len() {
            cluster.write_config(ordinal, |_| {});
        }
        give_to_service_user(&cluster.dir);
        cluster
    }

    /// The temporary directory of this cluster.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config `ordinal` runs with, after `tweak`.
    pub fn config(
        &self,
        ordinal: usize,
        tweak: impl FnOnce(&mut InstanceConfig),
    ) -> InstanceConfig {
        let pod = &self.pods[ordinal];
        let mut parameters: BTreeMap<String, String> = [
            ("fsync", "off"),
            ("shared_buffers", "16MB"),
            ("max_connections", "40"),
            ("log_min_messages", "warning"),
            ("wal_receiver_status_interval", "1s"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
        for (key, value) in &self.options.parameters {
            parameters.insert(key.to_string(), value.to_string());
        }
        let mut config = InstanceConfig {
            schema_version: 1,
            scaled_app: SCALED_APP.into(),
            data_dir: pod.data_dir.display().to_string(),
            bin_dir: std::env::var("SCALED_PG_BIN").ok(),
            database: APP_USER.into(),
            app_user: APP_USER.into(),
            replication_user: REPLICATION_USER.into(),
            instances: self.options.instances,
            parameters,
            synchronous_replication: self.options.synchronous_replication,
            fence_after_seconds: self.options.fence_after_seconds,
            postgres_port: pod.postgres_port,
            status_port: pod.status_port,
            reclone_after_seconds: self.options.reclone_after_seconds,
            clone_max_rate_kib_per_second: self.options.clone_max_rate,
        };
        tweak(&mut config);
        config
    }

    /// Writes `ordinal`'s config file (after `tweak`).
    pub fn write_config(&self, ordinal: usize, tweak: impl FnOnce(&mut InstanceConfig)) {
        let config = self.config(ordinal, tweak);
        let path = &self.pods[ordinal].config_path;
        fs::write(
            path,
            serde_json::to_string_pretty(&config).expect("a config serialises"),
        )
        .expect("write the config");
    }

    /// Names `pod` as the shard's primary (atomically: a reader never sees half a name).
    pub fn name_primary(&self, pod: &str) {
        let temporary = self.dir.join("primary.new");
        fs::write(&temporary, format!("{pod}\n")).expect("write the record");
        fs::rename(&temporary, &self.record).expect("replace the record");
    }

    /// Names `pod` as the shard's primary and `uid` as the pod object the operator confirmed.
    pub fn name_primary_object(&self, pod: &str, uid: &str) {
        let temporary = self.dir.join("primary.new");
        fs::write(&temporary, format!("{pod} {uid}\n")).expect("write the record");
        fs::rename(&temporary, &self.record).expect("replace the record");
    }

    /// Makes the record unreadable (like an unreachable API server).
    pub fn hide_record(&self) {
        let _ = fs::remove_file(&self.record);
    }

    /// Starts `ordinal`'s manager with the standard environment.
    pub fn start(&self, ordinal: usize) -> Node {
        self.start_with(ordinal, &[])
    }

    /// Starts `ordinal`'s manager with extra or changed environment variables.
    pub fn start_with(&self, ordinal: usize, env: &[(&str, &str)]) -> Node {
        let pod = self.pods[ordinal].clone();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&pod.log)
            .expect("open the manager log");
        let mut command = as_service_user(env!("CARGO_BIN_EXE_scaled-instance"));
        command
            .arg("run")
            .arg("--config")
            .arg(&pod.config_path)
            .arg("--primary-file")
            .arg(&self.record)
            .arg("--socket-dir")
            .arg(&pod.socket_dir)
            .args([
                "--http-address",
                "127.0.0.1",
                "--listen-addresses",
                "127.0.0.1",
            ])
            .args(["--tick-ms", "500"]);
        for other in &self.pods {
            command
                .arg("--peer")
                .arg(format!("{}=127.0.0.1:{}", other.name, other.postgres_port));
        }
        command
            .env(ENV_INSTANCE_POD, &pod.name)
            .env(ENV_INSTANCE_NAMESPACE, NAMESPACE)
            .env(ENV_INSTANCE_SHARD, "0")
            .env(ENV_SUPERUSER_PASSWORD, SUPERUSER_PASSWORD)
            .env(ENV_REPLICATION_PASSWORD, REPLICATION_PASSWORD)
            .env(ENV_APP_PASSWORD, APP_PASSWORD)
            .env("RUST_LOG", "info,scaled_instance=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .process_group(0);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn scaled-instance");
        let pgid = child.id() as i32;
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {} 2>/dev/null; do sleep 1; done; kill -9 -{pgid} 2>/dev/null",
                std::process::id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the watchdog");
        Node {
            pod,
            child: Some(child),
            pgid,
            watchdog: Some(watchdog),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test cluster kept for inspection: {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// One running manager (and everything in its process group).
pub struct Node {
    /// The pod it manages.
    pub pod: Pod,
    child: Option<Child>,
    pgid: i32,
    watchdog: Option<Child>,
    http: reqwest::Client,
}

impl Node {
    /// The manager's pid.
    pub fn pid(&self) -> i32 {
        self.pgid
    }

    /// `GET /status`, if it answers.
    pub async fn try_status(&self) -> Option<InstanceStatus> {
        self.http
            .get(format!("http://127.0.0.1:{}/status", self.pod.status_port))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// `GET path` -> (status code, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.pod.status_port))
            .send()
            .await
            .expect("the status port answers");
        let code = response.status().as_u16();
        (code, response.text().await.expect("a body"))
    }

    /// Waits until the status satisfies `check`; returns it.
    pub async fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&InstanceStatus) -> bool,
    ) -> InstanceStatus {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(status) = self.try_status().await {
                if check(&status) {
                    return status;
                }
                last = Some(status);
            }
            if let Some(exit) = self.try_exit() {
                panic!(
                    "{} exited with {exit} while waiting for {what}\n{}",
                    self.pod.name,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; last status {last:?}\n{}",
                self.pod.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until it is ready in `role`.
    pub async fn wait_ready(&mut self, role: InstanceRole) -> InstanceStatus {
        self.wait_status(&format!("ready as {role:?}"), READY_TIMEOUT, |status| {
            status.ready && status.role == role
        })
        .await
    }

    /// The last lines of the manager's log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.pod.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(60);
        format!(
            "--- {} log ---\n{}",
            self.pod.name,
            lines[start..].join("\n")
        )
    }

    /// Sends `signal` to the manager only.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pgid), signal).expect("signal the manager");
    }

    /// Its exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().expect("poll the manager"))
    }

    /// Waits for the manager to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit in {timeout:?}\n{}",
                self.pod.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits for the exit.
    pub async fn stop(mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(90)).await
    }

    /// SIGKILL to the whole process group (manager, postgres, tools): a crash.
    pub fn crash(mut self) {
        self.kill_group();
    }

    fn kill_group(&mut self) {
        // Backends run in sessions of their own (Postgres calls setsid), out of reach of a
        // signal to our group: freeze the postmaster so it forks no more, then kill them too,
        // as the death of a pod would.
        let postmaster = self.postmaster_pid().map(Pid::from_raw);
        if let Some(postmaster) = postmaster {
            let _ = kill(postmaster, Signal::SIGSTOP);
            for child in children_of(postmaster.as_raw()) {
                let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
            }
        }
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        // Backends of a killed postmaster notice and exit on their own; wait until the group
        // is gone so the next start finds the port and shared memory free.
        let deadline = Instant::now() + Duration::from_secs(30);
        while killpg(Pid::from_raw(self.pgid), None).is_ok() && Instant::now() < deadline {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    /// A connection over TCP as `user` with `password` to `database`.
    pub async fn connect_tcp(
        &self,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        connect(
            tokio_postgres::Config::new()
                .host("127.0.0.1")
                .port(self.pod.postgres_port)
                .user(user)
                .password(password)
                .dbname(database)
                .connect_timeout(Duration::from_secs(10)),
        )
        .await
    }

    /// The app role on the app database.
    pub async fn app(&self) -> Client {
        self.connect_tcp(APP_USER, APP_PASSWORD, APP_USER)
            .await
            .unwrap_or_else(|error| panic!("{}: app connection: {error}", self.pod.name))
    }

    /// The superuser over the Unix socket.
    pub async fn superuser(&self) -> Client {
        connect(
            tokio_postgres::Config::new()
                .host_path(&self.pod.socket_dir)
                .port(self.pod.postgres_port)
                .user("postgres")
                .password(SUPERUSER_PASSWORD)
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap_or_else(|error| panic!("{}: superuser connection: {error}", self.pod.name))
    }

    /// The postmaster's pid, from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<i32> {
        fs::read_to_string(self.pod.data_dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.is_some() {
            if std::thread::panicking() {
                eprintln!("{}", self.log_tail());
            }
            self.kill_group();
        }
    }
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A checksum of a directory tree: every path, type, mode, size, mtime and file content.
pub fn tree_checksum(root: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    fn walk(path: &Path, hasher: &mut Sha256) {
        let metadata = fs::symlink_metadata(path).expect("stat");
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update(
            format!(
                "|{:o}|{}|{}.{}|",
                metadata.mode(),
                metadata.size(),
                metadata.mtime(),
                metadata.mtime_nsec()
            )
            .as_bytes(),
        );
        if metadata.is_dir() {
            let mut entries: Vec<PathBuf> = fs::read_dir(path)
                .expect("list")
                .map(|entry| entry.expect("an entry").path())
                .collect();
            entries.sort();
            for entry in entries {
                walk(&entry, hasher);
            }
        } else if metadata.is_file() {
            hasher.update(fs::read(path).expect("read"));
        }
    }
    let mut hasher = Sha256::new();
    walk(root, &mut hasher);
    hex::encode(hasher.finalize())
}

/// Writes the identity of this test shard into `dir`.
pub fn write_identity(dir: &Path, scaled_app: &str) {
    let identity = scaled_contract::instance::DataIdentity {
        namespace: NAMESPACE.into(),
        scaled_app: scaled_app.into(),
        shard: 0,
    };
    let mut file = fs::File::create(dir.join(IDENTITY_FILE)).expect("create the identity");
    file.write_all(
        serde_json::to_string(&identity)
            .expect("an identity serialises")
            .as_bytes(),
    )
    .expect("write the identity");
}

/// Whether any process still runs with `needle` in its command line.
pub fn process_running_with(needle: &str) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.filter_map(Result::ok).any(|entry| {
        entry.file_name().to_string_lossy().parse::<u32>().is_ok()
            && fs::read(entry.path().join("cmdline"))
                .map(|cmdline| {
                    String::from_utf8_lossy(&cmdline)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
    })
}

/// Pids of processes whose command line contains every one of `needles`.
pub fn pids_with(needles: &[&str]) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            needles
                .iter()
                .all(|needle| cmdline.contains(needle))
                .then_some(pid)
        })
        .collect()
}

/// Pids whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            let parent_pid: i32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (parent_pid == parent).then_some(pid)
        })
        .collect()
}

/// `pg_controldata`'s "Database cluster state" of `data_dir`.
pub fn cluster_state(data_dir: &Path) -> String {
    let output = Command::new(pg_bin("pg_controldata"))
        .arg("-D")
        .arg(data_dir)
        .env("LC_ALL", "C")
        .output()
        .expect("pg_controldata runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("Database cluster state:"))
        .map(|state| state.trim().to_string())
        .unwrap_or_default()
}
