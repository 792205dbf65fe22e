//! Copies past the processor's caches: a tile is written into the memory tier once, into a
//! place last used a budget's worth of tiles ago (its lines are in no cache), and read back by
//! a hit much later, so fetching those lines first to write them — what ordinary stores do —
//! is wasted memory traffic. Non-temporal stores write whole lines without reading them.

/// Copies `src` to `dst`: with non-temporal stores where the processor has AVX2 (32 bytes a
/// store, ordinary ones up to `dst`'s first 32-byte boundary and after the last; fenced, so they
/// are seen before anything written after), elsewhere an ordinary copy.
///
/// # Safety
/// `dst` is valid for `src.len()` bytes of writes and does not overlap `src`.
pub unsafe fn copy(dst: *mut u8, src: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        unsafe { x86::copy_avx2(dst, src) };
        return;
    }
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256, _mm_sfence};

    /// [`super::copy`] with AVX2: 32 bytes a store, two cache lines (four stores) at a time.
    ///
    /// # Safety
    /// As [`super::copy`]; the processor has AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn copy_avx2(dst: *mut u8, src: &[u8]) {
        let lead = dst.align_offset(32).min(src.len());
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst, lead);
            let mut i = lead;
            while i + 128 <= src.len() {
                let s = src.as_ptr().add(i).cast::<__m256i>();
                let d = dst.add(i).cast::<__m256i>();
                let (a, b) = (_mm256_loadu_si256(s), _mm256_loadu_si256(s.add(1)));
                let (c, e) = (_mm256_loadu_si256(s.add(2)), _mm256_loadu_si256(s.add(3)));
                _mm256_stream_si256(d, a);
                _mm256_stream_si256(d.add(1), b);
                _mm256_stream_si256(d.add(2), c);
                _mm256_stream_si256(d.add(3), e);
                i += 128;
            }
            while i + 32 <= src.len() {
                let v = _mm256_loadu_si256(src.as_ptr().add(i).cast::<__m256i>());
                _mm256_stream_si256(dst.add(i).cast::<__m256i>(), v);
                i += 32;
            }
            std::ptr::copy_nonoverlapping(src.as_ptr().add(i), dst.add(i), src.len() - i);
            _mm_sfence();
        }
    }
}

#[cfg(test)]
mod tests {
    /// The copy (and its AVX2 way, where the processor has it) copies exactly, whatever the alignment and length, and writes
    /// nothing outside its range.
    #[test]
    fn every_copy_copies_every_byte_and_no_other() {
        type CopyFn = unsafe fn(*mut u8, &[u8]);
        let mut ways: Vec<(&str, CopyFn)> = vec![("chosen", super::copy)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                ways.push(("avx2", |d, s| unsafe { super::x86::copy_avx2(d, s) }));
            }
        }
        let src: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
        for (way, copy) in ways {
            for at in 0..40 {
                for len in [
                    0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 95, 96, 97, 100, 127, 128, 129, 160,
                    200, 255, 256, 257, 4099,
                ] {
                    let mut dst = vec![0u8; 5200];
                    unsafe { copy(dst.as_mut_ptr().add(at), &src[..len]) };
                    assert!(
                        dst[at..at + len] == src[..len],
                        "{way}: at {at}, {len} bytes"
                    );
                    assert!(
                        dst[..at].iter().chain(&dst[at + len..]).all(|b| *b == 0),
                        "{way}: at {at}, {len} bytes: written outside"
                    );
                }
            }
        }
    }
}
