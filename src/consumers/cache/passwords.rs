//! Passwords that passed their bcrypt check, and those that failed it, remembered (by a digest
//! of the user, the password and the stored hash: a new password is a new digest) so the next
//! request with them is not checked again — a map client with a stale password fires a bcrypt
//! check per tile otherwise. Two generations:
//! when the newer is full it becomes the older and the older goes, and a password found in the
//! older moves to the newer — the passwords in use stay remembered however many come and go,
//! where emptying the whole set when it was full had every consumer checked again at once
//! (a bcrypt check costs tens of milliseconds of a core).

use std::collections::HashSet;

/// Passwords per generation.
const GENERATION: usize = 50_000;

pub struct PasswordMemos {
    newer: HashSet<[u8; 32]>,
    older: HashSet<[u8; 32]>,
    generation: usize,
}

impl Default for PasswordMemos {
    fn default() -> Self {
        PasswordMemos::with_generation(GENERATION)
    }
}

impl PasswordMemos {
    fn with_generation(generation: usize) -> PasswordMemos {
        PasswordMemos {
            newer: HashSet::new(),
            older: HashSet::new(),
            generation,
        }
    }

    /// Whether `memo` is remembered (it stays so a generation longer).
    pub fn contains(&mut self, memo: &[u8; 32]) -> bool {
        if self.newer.contains(memo) {
            return true;
        }
        if self.older.remove(memo) {
            self.insert(*memo);
            return true;
        }
        false
    }

    pub fn insert(&mut self, memo: [u8; 32]) {
        if self.newer.len() >= self.generation {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(memo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memo(i: u32) -> [u8; 32] {
        let mut m = [0; 32];
        m[..4].copy_from_slice(&i.to_le_bytes());
        m
    }

    #[test]
    fn passwords_in_use_stay_remembered_while_many_others_come_and_go() {
        let mut v = PasswordMemos::with_generation(100);
        v.insert(memo(0));
        for i in 1..10_000 {
            v.insert(memo(i));
            // Password 0 is used now and then, more often than a generation fills.
            if i % 50 == 0 {
                assert!(v.contains(&memo(0)), "forgotten after {i} others");
            }
            assert!(v.newer.len() + v.older.len() <= 200);
        }
        assert!(
            !v.contains(&memo(1)),
            "one not used for two generations is forgotten"
        );
        assert!(v.contains(&memo(9_999)) && !v.contains(&memo(10_000)));
    }
}
