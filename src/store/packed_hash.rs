//! A Redis hash packed into one allocation: its fields sorted by name, each field and value
//! written as a length (LEB128) and its UTF-8 bytes. The embedded store keeps every hash of
//! every consumer and credential in memory; a map of `String`s costs two allocations and a tree
//! node share per field, this costs one allocation per hash (a key-auth credential: ~300 bytes
//! instead of ~1.4 KB). Reads walk the bytes; writes, which are rare, repack.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Default, PartialEq, Eq)]
pub struct PackedHash {
    bytes: Box<[u8]>,
}

impl PackedHash {
    /// Packs `pairs`; a field given twice keeps its last value.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> PackedHash {
        let sorted: BTreeMap<&str, &str> = pairs.into_iter().collect();
        let mut bytes = Vec::with_capacity(
            sorted
                .iter()
                .map(|(f, v)| f.len() + v.len() + 4)
                .sum::<usize>(),
        );
        for (field, value) in sorted {
            push_str(&mut bytes, field);
            push_str(&mut bytes, value);
        }
        PackedHash {
            bytes: bytes.into_boxed_slice(),
        }
    }

    /// The fields and their values, sorted by field.
    pub fn iter(&self) -> Iter<'_> {
        Iter { rest: &self.bytes }
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.iter().find(|(f, _)| *f == field).map(|(_, v)| v)
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    let mut len = s.len();
    loop {
        let low = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(low);
            break;
        }
        out.push(low | 0x80);
    }
    out.extend_from_slice(s.as_bytes());
}

/// Reads one length-prefixed string off the front of `rest`. Only `push_str` wrote these
/// bytes, so they are well formed; a malformed tail ends the iteration rather than panicking.
fn take_str<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let (&b, tail) = rest.split_first()?;
        *rest = tail;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift >= usize::BITS {
            return None;
        }
    }
    if len > rest.len() {
        return None;
    }
    let (s, tail) = rest.split_at(len);
    *rest = tail;
    std::str::from_utf8(s).ok()
}

pub struct Iter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let field = take_str(&mut self.rest)?;
        let value = take_str(&mut self.rest)?;
        Some((field, value))
    }
}

impl fmt::Debug for PackedHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// On disk a hash stays a JSON object of field → value, as before packing.
impl Serialize for PackedHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (f, v) in self.iter() {
            map.serialize_entry(f, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for PackedHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HashVisitor;
        impl<'de> Visitor<'de> for HashVisitor {
            type Value = PackedHash;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of field names to string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PackedHash, A::Error> {
                let mut pairs: Vec<(String, String)> = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(PackedHash::from_pairs(
                    pairs.iter().map(|(f, v)| (f.as_str(), v.as_str())),
                ))
            }
        }
        deserializer.deserialize_map(HashVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_back_sorted_and_last_value_wins() {
        let h = PackedHash::from_pairs([("b", "2"), ("a", "1"), ("b", "3")]);
        assert_eq!(h.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "3")]);
        assert_eq!(h.get("b"), Some("3"));
        assert_eq!(h.get("c"), None);
    }

    #[test]
    fn long_and_unicode_values_survive() {
        let long = "é".repeat(40_000);
        let h = PackedHash::from_pairs([("key", long.as_str()), ("", "")]);
        assert_eq!(h.get("key"), Some(long.as_str()));
        assert_eq!(h.get(""), Some(""));
    }

    #[test]
    fn json_form_is_a_plain_object() {
        let h = PackedHash::from_pairs([("isActive", "true"), ("id", "k\"1")]);
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(text, r#"{"id":"k\"1","isActive":"true"}"#);
        let back: PackedHash = serde_json::from_str(&text).unwrap();
        assert_eq!(back, h);
    }
}
