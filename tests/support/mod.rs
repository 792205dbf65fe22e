//! Test support: a real echo upstream on loopback, a raw HTTP/1.1 client, config directories
//! in temp folders, and the real `tollgate` binary started as a user would start it.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod echo;
pub mod eg;
pub mod gateway;
pub mod hugepages;
pub mod jwt;
pub mod load;
pub mod pyjwt;
pub mod redis;
pub mod s3;
pub mod tls;
pub mod upstream;

pub use client::{get, json_body, request, send_json, send_until_close, Response};

/// A child process killed and reaped when dropped: a test that panics leaves none behind.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        forget_run_files(self.0.id());
    }
}

/// Removes the run files (`tollgate-*.json` in the temporary directory) that name `pid`: a
/// gateway killed by a test cannot withdraw its own, and each test's config directory names
/// another (thousands were left in `/tmp`).
pub fn forget_run_files(pid: u32) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let starts = format!("{{\"pid\":{pid},");
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("tollgate-")
            && name.ends_with(".json")
            && std::fs::read_to_string(e.path()).is_ok_and(|t| t.starts_with(&starts))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
pub use echo::EchoUpstream;
pub use gateway::{free_port, ConfigDir, GatewayProcess};
