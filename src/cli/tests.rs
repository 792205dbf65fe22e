use super::size;

#[test]
fn sizes_take_binary_and_decimal_units_up_to_terabytes() {
    for (s, bytes) in [
        ("1048576", 1 << 20),
        ("512k", 512 << 10),
        ("256MiB", 256 << 20),
        ("1.5G", 3 << 29),
        ("2T", 2 << 40),
        ("1TiB", 1 << 40),
        ("3TB", 3_000_000_000_000),
        ("10 kB", 10_000),
    ] {
        assert_eq!(size(s), Ok(bytes), "{s}");
    }
    assert!(size("1P").unwrap_err().contains("unknown size unit `P`"));
    assert!(size("lots").unwrap_err().contains("is not a size"));
    assert!(size("999999999T").unwrap_err().contains("out of range"));
}
