//! Request ids in EG's format: a random 128-bit value written in base62 (22 characters),
//! which is what EG's `uuid62.v4()` produces for `eg-request-id`.

const ALPHABET: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A new random request id.
pub fn new_request_id() -> String {
    let mut n = fastrand::u128(..);
    let mut out = [b'0'; 22];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_22_base62_chars_and_differ() {
        let a = super::new_request_id();
        let b = super::new_request_id();
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
