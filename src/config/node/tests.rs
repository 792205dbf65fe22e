use super::*;

/// Aliases of one long string count its bytes: 80,000 copies of 10 kB were 800 MB within
/// a limit of values.
#[test]
fn aliases_of_long_strings_count_their_bytes() {
    let mut yaml = format!("a: &a '{}'\n", "x".repeat(10_000));
    for (n, prev) in ["b", "c", "d", "e"].iter().zip(["a", "b", "c", "d"]) {
        yaml.push_str(&format!(
            "{n}: &{n} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        ));
    }
    let err = parse(&yaml, &Arc::from("t.yml")).expect_err("refused");
    assert!(
        err.reason.contains("aliases stand for more than"),
        "{}",
        err.reason
    );
}

#[test]
fn yaml_1_1_integers_as_eg_reads_them() {
    assert_eq!(yaml11_int("120_000"), Some(120_000));
    assert_eq!(yaml11_int("073135"), Some(30301));
    assert_eq!(yaml11_int("-010"), Some(-8));
    assert_eq!(yaml11_int("0b101"), Some(5));
    assert_eq!(yaml11_int("0"), None);
    assert_eq!(yaml11_int("08080"), None);
    assert_eq!(yaml11_int("1234"), None);
    assert_eq!(yaml11_int("_1"), None);
    assert_eq!(yaml11_int("120_"), None);
    assert_eq!(yaml11_int("abc"), None);
}

fn doc(text: &str) -> Node {
    parse(text, &Arc::from("t.yml")).expect("parses")
}

/// Digits after a leading zero that are no octal number stay text, as EG's reader has them
/// (a password of digits from a variable was read as a number, its zeros lost).
#[test]
fn digits_after_a_leading_zero_that_are_no_octal_number_are_text() {
    for (text, want) in [
        ("0189", Value::Str("0189".into())),
        ("08080", Value::Str("08080".into())),
        ("-09", Value::Str("-09".into())),
        ("0755", Value::Int(493)),
        ("0", Value::Int(0)),
        ("10", Value::Int(10)),
    ] {
        assert_eq!(
            format!("{:?}", resolve_plain(text.to_string())),
            format!("{want:?}"),
            "{text}"
        );
    }
}

/// Collections nested thousands deep are an error at the first one too deep, read on a
/// thread with the stack a runtime's worker has (a reload runs there): they overflowed it.
#[test]
fn collections_nested_too_deep_are_an_error() {
    for doc in [
        format!("x:\n  {}1\n", "- ".repeat(5000)),
        format!("x:\n  {}1\n", "[".repeat(5000)),
        (0..3000)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect(),
        // Anchors each aliasing the one before, 60 deep each: 20 of them 1,200 deep.
        {
            let nest = |inner: &str| format!("{}{inner}{}", "[".repeat(60), "]".repeat(60));
            let mut doc = format!("x:\n  k0: &a0 {}\n", nest("1"));
            for i in 1..20 {
                doc += &format!("  k{i}: &a{i} {}\n", nest(&format!("*a{}", i - 1)));
            }
            doc
        },
    ] {
        let read = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || parse(&doc, &Arc::from("f.yml")).map(|_| ()))
            .expect("thread")
            .join()
            .expect("no overflow");
        let e = read.expect_err("refused");
        assert!(
            e.to_string().contains("nested more than 100 deep")
                || e.to_string().contains("recursion"),
            "{e}"
        );
    }
}

#[test]
fn positions_are_one_based() {
    let root = doc("a:\n  b: 1\n  c: [x, 'y']\n");
    let b = root.get("a").and_then(|a| a.get("b")).expect("b");
    assert_eq!((b.pos.line, b.pos.col), (2, 6));
    let c = root.get("a").and_then(|a| a.get("c")).expect("c");
    assert_eq!(c.as_seq().map(|s| s.len()), Some(2));
    assert_eq!(c.as_seq().and_then(|s| s[1].as_str()), Some("y"));
}

#[test]
fn scalars_are_typed_like_yaml_core() {
    let root = doc("a: 12\nb: true\nc: '12'\nd: ~\ne: 1.5\nf: hello\n");
    assert!(matches!(
        root.get("a").map(|n| &n.value),
        Some(Value::Int(12))
    ));
    assert!(matches!(
        root.get("b").map(|n| &n.value),
        Some(Value::Bool(true))
    ));
    assert_eq!(root.get("c").and_then(Node::as_str), Some("12"));
    assert!(root.get("d").map(Node::is_null).unwrap_or(false));
    assert!(matches!(
        root.get("e").map(|n| &n.value),
        Some(Value::Float(_))
    ));
    assert_eq!(root.get("f").and_then(Node::as_str), Some("hello"));
}

#[test]
fn a_key_given_twice_in_one_map_is_an_error_at_the_second() {
    let file: Arc<str> = Arc::from("g.yml");
    let e = parse("a: 1\nb:\n  c: 1\n  c: 2\n", &file).expect_err("duplicate");
    assert_eq!(
        e.to_string(),
        "g.yml:4:3: duplicated mapping key `c` (first at line 3)"
    );
    // The same key in two maps, and a key a merge also brings, are not duplicates.
    assert!(parse("a: {c: 1}\nb: {c: 2}\n", &file).is_ok());
    assert!(parse("base: &b {c: 1}\nx:\n  <<: *b\n  c: 2\n", &file).is_ok());
}

/// `<<` merges maps only, as EG's reader: a scalar, or a list with a scalar in it, is an error
/// where it stands (it was dropped without a word).
#[test]
fn a_merge_of_what_is_no_map_is_an_error() {
    let file: Arc<str> = Arc::from("g.yml");
    for (yaml, at) in [
        ("x:\n  <<: 5\n", "g.yml:2:7:"),
        ("x:\n  <<: 'a'\n", "g.yml:2:7:"),
        ("a: &a {c: 1}\nx:\n  <<: [*a, 5]\n", "g.yml:3:7:"),
    ] {
        let e = parse(yaml, &file).expect_err(yaml).to_string();
        assert!(
            e.starts_with(at) && e.contains("`<<` merges maps only"),
            "{yaml}: {e}"
        );
    }
    assert!(parse("a: &a {c: 1}\nb: &b {d: 1}\nx:\n  <<: [*a, *b]\n", &file).is_ok());
}

#[test]
fn anchors_and_merge_keys_resolve() {
    let root = doc("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n");
    let used = root.get("use").expect("use");
    assert!(matches!(
        used.get("x").map(|n| &n.value),
        Some(Value::Int(1))
    ));
    assert!(matches!(
        used.get("y").map(|n| &n.value),
        Some(Value::Int(3))
    ));
    // The order EG's reader gives: merged entries where the `<<` stands, a key before it
    // kept, one after it in the merged entry's place (endpoints are tried in this order).
    let root = doc(
        "base: &b {tiles: 1, y: 2, z: 3}\nuse:\n  first: 0\n  z: 9\n  <<: *b\n  special: 4\n  y: 5\n",
    );
    let Value::Map(entries) = &root.get("use").expect("use").value else {
        panic!("a map")
    };
    let order: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{}={:?}", k.scalar_text().unwrap_or_default(), v.value))
        .collect();
    assert_eq!(
        order,
        [
            "first=Int(0)",
            "z=Int(9)",
            "tiles=Int(1)",
            "y=Int(5)",
            "special=Int(4)"
        ]
    );
}

#[test]
fn syntax_errors_have_a_position() {
    let err = parse("a: [1, 2\nb: c\n", &Arc::from("t.yml")).expect_err("bad yaml");
    assert_eq!(&*err.pos.file, "t.yml");
    assert!(err.pos.line >= 1);
    assert!(err.reason.starts_with("invalid YAML"));
}

#[test]
fn json_documents_parse_too() {
    let root = doc("{\"scopes\": [\"wms\"], \"users\": {\"u\": {}}}");
    assert_eq!(
        root.get("scopes").and_then(Node::as_seq).map(|s| s.len()),
        Some(1)
    );
}

/// A number JSON has not is `null` where the Admin API serves the config (as EG's
/// `JSON.stringify` writes it), and its text where parameters are read (no numeric parameter
/// takes it: as `null` it read as not set).
#[test]
fn numbers_json_has_not_are_null_served_and_text_read() {
    let root = doc("a: .nan\nb: .inf\nc: -.inf\nd: 1e999\ne: 1.5\n");
    assert_eq!(
        root.to_json(),
        serde_json::json!({"a": null, "b": null, "c": null, "d": null, "e": 1.5})
    );
    assert_eq!(
        root.to_param_json(),
        serde_json::json!({"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": "Infinity", "e": 1.5})
    );
}

/// A tag EG's reader does not know is an error where it stands, as there (it was read as if
/// it were not written); the core types' tags and the non-specific `!` are taken.
#[test]
fn a_tag_eg_does_not_know_is_an_error() {
    let file: Arc<str> = Arc::from("g.yml");
    for (yaml, said) in [
        ("a: !foo bar\n", "g.yml:1:9: unknown YAML tag `!foo`"),
        (
            "a:\n  b: !Ref {x: 1}\n",
            "g.yml:2:11: unknown YAML tag `!Ref`",
        ),
        (
            "a: !!python/name:x y\n",
            "g.yml:1:20: unknown YAML tag `!!python/name:x`",
        ),
        (
            "a: !<tag:example.com,2000:x> [1]\n",
            "g.yml:1:30: unknown YAML tag `!<tag:example.com,2000:x>`",
        ),
    ] {
        let e = parse(yaml, &file).expect_err(yaml).to_string();
        assert!(e.starts_with(said), "{yaml}: {e}");
    }
    for yaml in [
        "a: !!str 12\n",
        "a: !!int 12\n",
        "a: ! 12\n",
        "a: !<tag:yaml.org,2002:str> 12\n",
        "a: !!seq [1]\n",
        "a: !!map {x: 1}\n",
        "a: !!set {x}\n",
        "a: !!js/regexp /x/\n",
    ] {
        assert!(parse(yaml, &file).is_ok(), "{yaml}");
    }
}
