//! How to find the Redis to talk to (a URL, or Sentinel asked for its master) and how to
//! connect to it, within [`CONNECT_TIMEOUT`].

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Client;

use super::{unavailable, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use crate::config::system_file::RedisTls;
use crate::store::StoreResult;

/// How to find the Redis to talk to.
#[derive(Clone)]
pub(super) enum Target {
    Url {
        url: String,
        tls: Option<RedisTls>,
    },
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        username: Option<String>,
        password: Option<String>,
        db: i64,
        tls: Option<RedisTls>,
    },
}

pub(super) fn url_for(
    host: &str,
    port: u16,
    (username, password): (Option<&str>, Option<&str>),
    db: i64,
    tls: Option<&RedisTls>,
) -> String {
    let scheme = if tls.is_some() { "rediss" } else { "redis" };
    // (The redis crate's word for a server certificate not checked.)
    let unchecked = if tls.is_some_and(|t| !t.verify) {
        "#insecure"
    } else {
        ""
    };
    let encode = |t| percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC);
    let auth = match (username, password) {
        (None, None) => String::new(),
        (user, password) => format!(
            "{}:{}@",
            user.map(encode).map(|u| u.to_string()).unwrap_or_default(),
            password
                .map(encode)
                .map(|p| p.to_string())
                .unwrap_or_default()
        ),
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("{scheme}://{auth}{host}:{port}/{db}{unchecked}")
}

/// The client for `url`, with the certificates `tls` gives (the system's roots when it gives
/// none).
fn open(url: &str, tls: Option<&RedisTls>) -> StoreResult<Client> {
    match tls {
        Some(t) if !t.ca.is_empty() || t.client.is_some() => {
            let certificates = redis::TlsCertificates {
                client_tls: t.client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone().into_bytes(),
                    client_key: key.clone().into_bytes(),
                }),
                root_cert: (!t.ca.is_empty()).then(|| t.ca.join("\n").into_bytes()),
            };
            Client::build_with_tls(url, certificates).map_err(unavailable)
        }
        _ => Client::open(url).map_err(unavailable),
    }
}

/// The client for the Redis `target` names (Sentinel asked for its master).
pub(super) async fn client_for(target: &Target) -> StoreResult<Client> {
    match target {
        Target::Url { url, tls } => open(url, tls.as_ref()),
        Target::Sentinel {
            sentinels,
            master,
            username,
            password,
            db,
            tls,
        } => {
            let mut sentinel =
                redis::sentinel::Sentinel::build(sentinels.clone()).map_err(unavailable)?;
            let found =
                tokio::time::timeout(CONNECT_TIMEOUT, sentinel.async_master_for(master, None))
                    .await
                    .map_err(|_| unavailable("no sentinel answered in time"))?
                    .map_err(unavailable)?;
            let addr = found.get_connection_info().addr().to_string();
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| unavailable(format!("sentinel gave `{addr}`")))?;
            let port = port.parse().map_err(unavailable)?;
            let url = url_for(
                host.trim_matches(['[', ']']),
                port,
                (username.as_deref(), password.as_deref()),
                *db,
                tls.as_ref(),
            );
            open(&url, tls.as_ref())
        }
    }
}

/// Connects to the Redis `target` names.
pub(super) async fn connect(target: &Target, describe: &str) -> StoreResult<ConnectionManager> {
    let client = client_for(target).await?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1);
    tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| unavailable(format!("{describe}: connect timed out")))?
    .map_err(|e| unavailable(format!("{describe}: {e}")))
}
