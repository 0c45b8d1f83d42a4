//! A PostgreSQL cluster run from the locally installed server binaries: the service's embedded
//! default (`database.url` unset) and the test suite's temporary servers.
//!
//! PostgreSQL refuses to run as root, so as root every binary runs as the `postgres` user
//! (through `runuser`) and the data directory is handed to that user.
//!
//! Nobody else gets in: the superuser has a generated password (scram-sha-256 on TCP and on the
//! socket, which lives inside the 0700 data directory), kept beside the data directory in a
//! 0600 file that only the service's user reads.
//!
//! One cluster, several processes: the process that starts the server owns it (its pid is kept
//! in `rampart.owner`) and stops it when it ends. Another process that finds the server running
//! under a live owner (`rampart merchant create` beside `make run`) uses it as it is and leaves it
//! running. A server whose owner is gone (a crash) is adopted.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin: \
         install them (Debian: apt-get install postgresql) or set database.url"
    )]
    MissingBinaries,
    #[error("{step} failed: {detail}")]
    Step { step: &'static str, detail: String },
}

fn step(step: &'static str, detail: impl ToString) -> ClusterError {
    ClusterError::Step {
        step,
        detail: detail.to_string(),
    }
}

pub const SUPERUSER: &str = "rampart";

#[derive(Debug, Clone)]
pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    password: Option<String>,
    /// Whether this process started (or adopted) the server and so stops it.
    owned: bool,
}

/// Whether the cluster trades durability for speed (tests) or not (the embedded default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Durable,
    Ephemeral,
}

impl Cluster {
    /// Initialises `data` unless it already holds a cluster, then starts it on `port` (or a free
    /// one) on 127.0.0.1, with its socket inside `data`.
    pub fn start(
        data: &Path,
        port: Option<u16>,
        durability: Durability,
    ) -> Result<Self, ClusterError> {
        let bin = find_binaries()?;
        std::fs::create_dir_all(data).map_err(|e| step("creating the data directory", e))?;
        let data = data
            .canonicalize()
            .map_err(|e| step("resolving the data directory", e))?;
        let as_postgres = running_as_root();
        let port = match port {
            Some(p) => p,
            None => free_port().map_err(|e| step("finding a free port", e))?,
        };
        let mut cluster = Self {
            bin,
            data,
            port,
            as_postgres,
            password: None,
            owned: true,
        };
        if as_postgres {
            cluster.run(
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&cluster.data),
            )?;
        }
        if !cluster.data.join("PG_VERSION").exists() {
            cluster.init(durability)?;
        }
        cluster.password = std::fs::read_to_string(cluster.password_file())
            .ok()
            .map(|p| p.trim().to_owned());
        if cluster.is_running() {
            cluster.port = cluster
                .running_port()
                .ok_or_else(|| step("reading the running server's port", "postmaster.pid"))?;
            if owner_alive(&cluster.data) {
                cluster.owned = false;
                return Ok(cluster);
            }
            cluster.write_owner()?;
            return Ok(cluster);
        }
        // Room for many instances at once: the integration tests run one service per test
        // against one cluster, and a test's service lets go of its connections lazily.
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=1000",
            cluster.data.display()
        );
        if durability == Durability::Ephemeral {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        cluster.options_file(&options)?;
        cluster.start_again()?;
        cluster.write_owner()?;
        Ok(cluster)
    }

    /// `initdb` with a generated superuser password, kept 0600 beside the data directory.
    fn init(&self, durability: Durability) -> Result<(), ClusterError> {
        let password = hex::encode(rand::random::<[u8; 24]>());
        // initdb wants the data directory empty, so its password file lives elsewhere briefly.
        let pwfile = std::env::temp_dir().join(format!("rampart-pw-{}", uuid::Uuid::new_v4()));
        write_private(&pwfile, &password).map_err(|e| step("writing the password file", e))?;
        if self.as_postgres {
            self.run(
                "chown",
                Command::new("chown").arg("postgres:postgres").arg(&pwfile),
            )?;
        }
        let mut initdb = self.pg("initdb");
        initdb
            .arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        if durability == Durability::Ephemeral {
            initdb.arg("--no-sync");
        }
        let result = self.run("initdb", &mut initdb);
        let _ = std::fs::remove_file(&pwfile);
        result?;
        write_private(&self.password_file(), &password).map_err(|e| step("keeping the password", e))
    }

    /// A streaming replica of this (running) cluster in `data`: `pg_basebackup -R` (a standby
    /// that follows the primary), started on a free port. Ephemeral durability, like the tests
    /// that use it.
    pub fn standby(&self, data: &Path) -> Result<Cluster, ClusterError> {
        let port = free_port().map_err(|e| step("finding a free port", e))?;
        let mut standby = Self {
            data: data.to_path_buf(),
            port,
            owned: true,
            ..self.clone()
        };
        std::fs::create_dir_all(data).map_err(|e| step("creating the data directory", e))?;
        // The server refuses a data directory others can read.
        std::fs::set_permissions(data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| step("restricting the data directory", e))?;
        if self.as_postgres {
            self.run(
                "chown",
                Command::new("chown").arg("postgres:postgres").arg(data),
            )?;
        }
        let mut backup = self.pg("pg_basebackup");
        backup
            .arg("-D")
            .arg(data)
            .args(["-R", "-X", "stream", "-c", "fast", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER])
            .env("PGPASSWORD", self.password.clone().unwrap_or_default());
        self.run("pg_basebackup", &mut backup)?;
        if let Some(password) = &self.password {
            write_private(&standby.password_file(), password)
                .map_err(|e| step("keeping the password", e))?;
        }
        standby.options_file(&format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=1000 -c fsync=off -c hot_standby_feedback=on",
            data.display()
        ))?;
        standby.start_again()?;
        standby.write_owner()?;
        standby.password = self.password.clone();
        Ok(standby)
    }

    /// `<data>.password`: beside the data directory, not inside it (the server's user owns that).
    pub fn password_file(&self) -> PathBuf {
        let mut name = self.data.file_name().unwrap_or_default().to_owned();
        name.push(".password");
        self.data.with_file_name(name)
    }

    fn is_running(&self) -> bool {
        let mut pg_ctl = self.pg("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data)
            .arg("status")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        pg_ctl.status().is_ok_and(|s| s.success())
    }

    /// The port in `postmaster.pid` (its fourth line).
    fn running_port(&self) -> Option<u16> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .nth(3)?
            .trim()
            .parse()
            .ok()
    }

    fn write_owner(&self) -> Result<(), ClusterError> {
        std::fs::write(
            self.data.join("rampart.owner"),
            std::process::id().to_string(),
        )
        .map_err(|e| step("recording the owner", e))
    }

    /// Whether this process stops the server when it ends.
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    fn options_file(&self, options: &str) -> Result<(), ClusterError> {
        std::fs::write(self.data.join("rampart.options"), options)
            .map_err(|e| step("writing server options", e))
    }

    /// Starts the (stopped) server again with the options it was first started with.
    pub fn start_again(&self) -> Result<(), ClusterError> {
        let options = std::fs::read_to_string(self.data.join("rampart.options"))
            .map_err(|e| step("reading server options", e))?;
        let mut pg_ctl = self.pg("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        self.run("pg_ctl start", &mut pg_ctl)
    }

    /// Stops the server: `fast` disconnects clients cleanly, `immediate` is a crash.
    pub fn stop_with(&self, mode: &str) -> Result<(), ClusterError> {
        let mut pg_ctl = self.pg("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", mode, "stop"]);
        self.run("pg_ctl stop", &mut pg_ctl)
    }

    pub fn stop(&self) -> Result<(), ClusterError> {
        self.stop_with("fast")
    }

    /// Stops the server and removes its directory once the current process is gone, however it
    /// ends: test binaries exit without running destructors.
    pub fn stop_when_process_exits(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let runuser = if self.as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {runuser}{pg_ctl} -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{data}' '{password}'",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = self.data.display(),
            password = self.password_file().display(),
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn url(&self, database: &str) -> String {
        match &self.password {
            Some(p) => format!(
                "postgres://{SUPERUSER}:{p}@127.0.0.1:{}/{database}",
                self.port
            ),
            None => format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port),
        }
    }

    /// Creates `database` unless it exists.
    pub async fn ensure_database(&self, database: &str) -> Result<(), ClusterError> {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .map_err(|e| step("connecting to the new cluster", e))?;
        let connection = tokio::spawn(connection);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
            .await
            .map_err(|e| step("looking up the database", e))?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!(
                    "CREATE DATABASE \"{}\"",
                    database.replace('"', "")
                ))
                .await
                .map_err(|e| step("creating the database", e))?;
        }
        drop(client);
        let _ = connection.await;
        Ok(())
    }

    fn pg(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, what: &'static str, command: &mut Command) -> Result<(), ClusterError> {
        let out = command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| step(what, e))?;
        if out.status.success() {
            Ok(())
        } else {
            let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if detail.is_empty() {
                detail = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            if let Ok(log) = std::fs::read_to_string(self.data.join("server.log")) {
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                detail.push_str(&format!(
                    " (server.log: {})",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
            Err(step(what, detail))
        }
    }
}

/// The directory holding `initdb` and `pg_ctl`: from PATH, else the newest under
/// `/usr/lib/postgresql/*/bin`.
pub fn find_binaries() -> Result<PathBuf, ClusterError> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d)) {
            // Debian links initdb into PATH but keeps `postgres` beside the real files.
            let real = dir
                .join("pg_ctl")
                .canonicalize()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf));
            return Ok(real.filter(|d| has_both(d)).unwrap_or(dir));
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| ClusterError::MissingBinaries)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(ClusterError::MissingBinaries)
}

pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes `contents` to a new file readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

/// Whether the process recorded as the server's owner still runs (and is not us).
fn owner_alive(data: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(data.join("rampart.owner"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return false;
    };
    // A reused pid belongs to some other program: only a live rampart process owns the server.
    pid != std::process::id()
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("rampart"))
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}
