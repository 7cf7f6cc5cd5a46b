//! A PostgreSQL cluster of the test's own, for what must not touch the shared one: other
//! `wal_level` values, slot invalidation, restarts.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Command;

use super::{free_port, services, unique};

pub struct Cluster {
    pub port: u16,
    dir: PathBuf,
}

/// Runs a PostgreSQL binary as the `postgres` user (initdb refuses root).
fn as_postgres(program: PathBuf) -> Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Cluster {
    /// `initdb` and start, with `settings` appended to postgresql.conf.
    pub async fn start(settings: &str) -> Cluster {
        let bin = services().pg_bin;
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("pg-cluster"));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::process::Command::new("chown").args(["postgres:postgres"]).arg(&dir).status();
        let status = as_postgres(bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(status.success(), "initdb failed");
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n{settings}\n",
            dir.display()
        );
        let path = dir.join("data/postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&conf);
        std::fs::write(&path, text).unwrap();
        let cluster = Cluster { port, dir };
        cluster.pg_ctl(&["start", "-w", "-t", "60"]).await;
        cluster
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub async fn pg_ctl(&self, args: &[&str]) {
        let status = as_postgres(services().pg_bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(status.success(), "pg_ctl {args:?} failed");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let bin = services().pg_bin.join("pg_ctl");
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(&bin);
        let _ = command
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
