use super::{connections, size, Cli};
use clap::Parser;

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

#[test]
fn a_connection_cap_is_one_or_more() {
    assert_eq!(connections("1"), Ok(1));
    assert_eq!(connections(" 500 "), Ok(500));
    for bad in ["0", "-1", "many", ""] {
        assert!(connections(bad).unwrap_err().contains("1 or more"), "{bad}");
    }
    // Refused where the command line is read (0 was a cap of one connection).
    let err = Cli::try_parse_from(["tollgate", "serve", "--max-connections", "0"])
        .err()
        .expect("refused");
    assert!(err.to_string().contains("1 or more"), "{err}");
}
