//! Request ids in the shape of EG's: 22 base62 characters, as EG's `uuid62.v4()` writes a
//! random 128-bit value for `eg-request-id`.

use std::sync::OnceLock;

/// A request's id, made when first asked for: a request answered without going upstream,
/// logging or templating it (a cache hit) never makes one.
#[derive(Debug, Default)]
pub struct RequestId(OnceLock<String>);

impl RequestId {
    pub fn get(&self) -> &str {
        self.0.get_or_init(new_request_id)
    }
}

const ALPHABET: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A new random request id: 22 random base62 characters (about 131 bits). Each character is
/// six random bits, drawn again when they are 62 or 63 (uniform; a fraction of the cost of
/// writing a 128-bit number in base 62).
pub fn new_request_id() -> String {
    let mut out = String::with_capacity(22);
    let mut bits = 0u64;
    let mut left = 0;
    while out.len() < 22 {
        if left == 0 {
            bits = fastrand::u64(..);
            left = 10;
        }
        let six = (bits & 63) as usize;
        bits >>= 6;
        left -= 1;
        if let Some(c) = ALPHABET.get(six) {
            out.push(char::from(*c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_request_keeps_the_id_it_was_first_given() {
        let id = super::RequestId::default();
        let first = id.get().to_string();
        assert_eq!(first.len(), 22);
        assert_eq!(id.get(), first);
        assert_ne!(super::RequestId::default().get(), first);
    }

    #[test]
    fn ids_are_22_base62_chars_and_differ() {
        let a = super::new_request_id();
        let b = super::new_request_id();
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
