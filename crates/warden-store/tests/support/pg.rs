//! A throwaway PostgreSQL server for tests: `initdb` into a temporary
//! directory, a server on a free 127.0.0.1 port (and a Unix socket in that
//! directory) with password (SCRAM) authentication, stopped on drop.
//!
//! Self-contained (std and `tempfile` only), so that any test crate can use
//! it:
//!
//! ```ignore
//! #[path = "../../warden-store/tests/support/pg.rs"]
//! mod pg;
//! let server = pg::TestPostgres::start();
//! // server.url: postgres://warden:<password>@127.0.0.1:<port>/postgres
//! ```
//!
//! The binaries are looked up on `PATH`, then in `/usr/lib/postgresql/*/bin`
//! (Debian's `postgresql` package). Without them this panics: a test that
//! needs PostgreSQL never passes by skipping. Run as root (CI), `initdb` and
//! the server run as the `postgres` user through `runuser`, since both
//! refuse root.
#![allow(dead_code, unreachable_pub)] // each including crate uses a part

use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The superuser the server is created with.
pub const USER: &str = "warden";

/// A running (or stopped) PostgreSQL server in a temporary directory.
pub struct TestPostgres {
    /// `postgres://warden:<password>@127.0.0.1:<port>/postgres`
    pub url: String,
    /// The superuser's password (it has characters that the URL encodes).
    pub password: String,
    /// The TCP port, kept across [`TestPostgres::start_again`].
    pub port: u16,
    bin: PathBuf,
    run_as: Option<String>,
    settings: Vec<(String, String)>,
    running: bool,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPostgres")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl TestPostgres {
    /// A new server, started.
    pub fn start() -> Self {
        Self::start_with(&[], &[])
    }

    /// A new server started with extra files in its data directory (owned
    /// by the server, mode 0600: certificates, keys, an `hba_file`) and extra
    /// `-c name=value` settings (relative paths are from the data directory).
    pub fn start_with(files: &[(&str, &str)], settings: &[(&str, &str)]) -> Self {
        let bin = find_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("warden-pg-")
            .tempdir()
            .expect("a temporary directory");
        // Whoever owns a directory we just made is who we run as.
        let run_as = (dir.path().metadata().expect("stat").uid() == 0).then(|| "postgres".into());
        let password = format!("w@rden/{:016x}", random());
        let mut server = Self {
            url: String::new(),
            password,
            port: 0,
            bin,
            run_as,
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            running: false,
            dir,
        };
        server.init(files);
        for _ in 0..5 {
            server.port = free_port();
            server.url = server.url_for("postgres");
            if server.try_start() {
                return server;
            }
            // Most likely someone else took the port in between: try another.
        }
        panic!("PostgreSQL did not start; its log:\n{}", server.log());
    }

    /// Stops the server (fast shutdown: sessions are told and closed).
    pub fn stop(&mut self) {
        if self.running {
            self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"]);
            self.running = false;
        }
    }

    /// Starts the stopped server again, on the same port and data.
    pub fn start_again(&mut self) {
        assert!(!self.running, "the server is running");
        assert!(
            self.try_start(),
            "PostgreSQL did not start again on port {}; its log:\n{}",
            self.port,
            self.log()
        );
    }

    /// The URL of database `db` on this server, as the superuser.
    pub fn url_for(&self, db: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{db}",
            encode(&self.password),
            self.port
        )
    }

    /// Runs `sql` with psql in database `postgres`, panicking if it fails;
    /// returns what psql printed (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", db, "-c", sql])
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "psql {sql:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates database `name` (ICU collation `en-US` when `icu`, so that
    /// text does not sort in byte order unless a query asks for it) and
    /// returns its URL.
    pub fn create_database(&self, name: &str, icu: bool) -> String {
        let locale = if icu {
            " TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        } else {
            ""
        };
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\"{locale}"));
        self.url_for(name)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the server has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn init(&self, files: &[(&str, &str)]) {
        self.give(self.dir.path());
        let pwfile = self.dir.path().join("pwfile");
        std::fs::write(&pwfile, &self.password).expect("write the password file");
        self.give(&pwfile);
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", USER, "--auth=scram-sha-256", "--no-sync"])
            .args(["-E", "UTF8", "--no-locale"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb runs");
        assert!(out.status.success(), "initdb failed: {}", text(&out));
        for (name, content) in files {
            let path = self.data_dir().join(name);
            std::fs::write(&path, content).expect("write a data-dir file");
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
            self.give(&path);
        }
    }

    fn try_start(&mut self) -> bool {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        for (name, value) in &self.settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let log = self.dir.path().join("log");
        let out = self
            .command("pg_ctl")
            .current_dir(self.data_dir()) // relative paths in settings
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "30", "-o", &options, "start"])
            .output()
            .expect("pg_ctl runs");
        self.running = out.status.success();
        self.running
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(args)
            .output()
            .expect("pg_ctl runs")
    }

    /// A PostgreSQL binary, run as the server's user when we are root.
    fn command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        match &self.run_as {
            None => Command::new(program),
            Some(user) => {
                let mut c = Command::new(runuser());
                c.args(["-u", user, "--"]).arg(program);
                c
            }
        }
    }

    /// Hands `path` to the server's user (when we are root).
    fn give(&self, path: &Path) {
        if let Some(user) = &self.run_as {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, user])
                    .output()
                    .expect("id runs");
                assert!(out.status.success(), "no user {user}: {}", text(&out));
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("a numeric id")
            };
            std::os::unix::fs::chown(path, Some(id("-u")), Some(id("-g"))).expect("chown");
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
        }
    }
}

fn find_bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres", "psql"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = on_path.iter().find(|d| has_all(d)) {
        return dir.clone();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_all(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed: these tests need initdb, pg_ctl, postgres and psql \
             (on PATH or in /usr/lib/postgresql/*/bin). Install the `postgresql` package: \
             apt-get install postgresql"
        ),
    }
}

fn runuser() -> PathBuf {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| "runuser".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Random enough for a test password (std has no RNG; its hasher keys are
/// random per process, and the time differs per call).
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// Percent-encodes what a URL's userinfo cannot hold as is.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
