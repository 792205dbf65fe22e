use super::{cache_budget, connections, size, Cli};
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

/// A tier's budget of 0 is refused: it stored nothing, every request a miss, silently.
#[test]
fn a_cache_budget_of_nothing_is_refused() {
    for s in ["0", "0k", "0.0GiB"] {
        let e = cache_budget(s).expect_err(s);
        assert!(e.contains("stores no tile"), "{s}: {e}");
    }
    assert_eq!(cache_budget("100k"), Ok(100 << 10));
    assert_eq!(cache_budget("256MiB"), Ok(256 << 20));
    assert!(cache_budget("lots").is_err());
}
