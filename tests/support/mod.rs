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
    }
}
pub use echo::EchoUpstream;
pub use gateway::{free_port, ConfigDir, GatewayProcess};
