//! Users, applications and credentials as EG stores them: flat string hashes (booleans as
//! `"true"`/`"false"`, dates in JavaScript's `Date.toString()` form, app scopes comma-joined,
//! credential scopes as JSON text), and as the Admin API shows them (JSON objects whose field
//! order follows the stored hash).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::layout::CredentialType;

/// A stored hash with its field order: the order EG wrote, which its Admin API shows.
pub type Fields = Vec<(String, String)>;

/// `new Date().toString()` in UTC, as EG writes `createdAt` / `updatedAt`.
pub fn js_date_now() -> String {
    js_date(std::time::SystemTime::now())
}

pub fn js_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{weekday} {month} {d:02} {y} {:02}:{:02}:{:02} GMT+0000 (Coordinated Universal Time)",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Now as RFC 3339 in UTC with milliseconds (`2026-11-26T10:39:09.123Z`), for logs.
pub fn rfc3339_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, m, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) — Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A JSON value as EG's Redis client writes it into a hash field (`String(value)`; `null` as
/// nothing, as ioredis writes it).
pub fn js_string(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::Null => String::new(),
                other => js_string(other),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => "[object Object]".into(),
    }
}

/// A 22-character base62 id, as EG's `uuid62.v4()` makes keyIds and keySecrets.
pub fn uuid62() -> String {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let mut n = u128::from_be_bytes(bytes);
    const ALPHABET: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = [b'0'; 22];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|&b| b as char).collect()
}

/// A stored hash read back into ordered fields.
pub fn ordered(map: HashMap<String, String>, order_hint: &[&str]) -> Fields {
    let mut fields: Fields = Vec::with_capacity(map.len());
    let mut map = map;
    for k in order_hint {
        if let Some(v) = map.remove(*k) {
            fields.push((k.to_string(), v));
        }
    }
    let mut rest: Vec<(String, String)> = map.into_iter().collect();
    rest.sort();
    // Extra properties sit before the dates, as EG writes them.
    let dates: Vec<(String, String)> = fields
        .iter()
        .filter(|(k, _)| k == "createdAt" || k == "updatedAt")
        .cloned()
        .collect();
    fields.retain(|(k, _)| k != "createdAt" && k != "updatedAt");
    fields.extend(rest);
    fields.extend(dates);
    fields
}

pub const USER_ORDER: &[&str] = &[
    "isActive",
    "username",
    "id",
    "firstname",
    "lastname",
    "email",
    "redirectUri",
    "createdAt",
    "updatedAt",
];
pub const APP_ORDER: &[&str] = &[
    "isActive",
    "id",
    "userId",
    "name",
    "redirectUri",
    "scopes",
    "createdAt",
    "updatedAt",
];

/// A user or app hash as the Admin API shows it: `isActive` a boolean, the rest strings.
pub fn object_json(fields: &Fields) -> Value {
    let mut obj = Map::new();
    for (k, v) in fields {
        let value = if k == "isActive" {
            Value::Bool(v == "true")
        } else {
            Value::String(v.clone())
        };
        obj.insert(k.clone(), value);
    }
    Value::Object(obj)
}

/// A credential hash as the Admin API shows it: `isActive` a boolean, `scopes` parsed, the
/// password and its bookkeeping removed, `type` and `id` added.
pub fn credential_json(t: CredentialType, id: &str, stored: &HashMap<String, String>) -> Value {
    let mut obj = Map::new();
    let hidden = [t.password_field(), "passwordKey", "autoGeneratePassword"];
    let order = [
        "isActive",
        "createdAt",
        "updatedAt",
        "keyId",
        "keySecret",
        "scopes",
        "consumerId",
    ];
    let mut keys: Vec<&String> = stored.keys().collect();
    keys.sort_by_key(|k| {
        (
            order.iter().position(|o| o == k).unwrap_or(order.len()),
            k.to_string(),
        )
    });
    for k in keys {
        if !t.is_keyed() && hidden.contains(&k.as_str()) {
            continue;
        }
        let v = &stored[k];
        let value = match k.as_str() {
            "isActive" => Value::Bool(v == "true"),
            "scopes" => serde_json::from_str(v).unwrap_or(Value::Null),
            _ => Value::String(v.clone()),
        };
        obj.insert(k.clone(), value);
    }
    obj.insert("type".into(), Value::String(t.as_str().into()));
    obj.insert("id".into(), Value::String(id.to_string()));
    Value::Object(obj)
}

/// Credential scopes as stored (JSON text), read back; `None` for `null` or absent.
pub fn credential_scopes(stored: &HashMap<String, String>) -> Option<Vec<String>> {
    stored.get("scopes").and_then(|s| scopes_text(s))
}

/// A credential's `scopes` field as stored (a JSON list).
pub fn scopes_text(stored: &str) -> Option<Vec<String>> {
    serde_json::from_str::<Option<Vec<String>>>(stored)
        .ok()
        .flatten()
}

/// Kargo's app scopes as stored (comma-joined).
pub fn app_scopes(stored: &HashMap<String, String>) -> Vec<String> {
    stored
        .get("scopes")
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_look_like_javascript() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_689_549);
        assert_eq!(
            js_date(t),
            "Thu Nov 26 2026 10:39:09 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(
            js_date(std::time::UNIX_EPOCH),
            "Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)"
        );
    }

    #[test]
    fn values_are_stringified_like_ioredis() {
        assert_eq!(js_string(&serde_json::json!(["wms", "wmts"])), "wms,wmts");
        assert_eq!(js_string(&serde_json::json!(true)), "true");
        assert_eq!(js_string(&serde_json::json!(42)), "42");
        assert_eq!(js_string(&serde_json::json!({"a": 1})), "[object Object]");
        assert_eq!(js_string(&serde_json::json!([])), "");
    }

    #[test]
    fn keys_are_22_base62() {
        let k = uuid62();
        assert_eq!(k.len(), 22);
        assert!(k.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
