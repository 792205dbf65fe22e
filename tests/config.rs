//! Config loading through the real binary: `check` exit codes, every kind of error reported at
//! once as `file:line:column: reason`, env interpolation, JSON configs, `--help`.

mod support;

use support::gateway::run_tollgate;
use support::{get, ConfigDir, GatewayProcess};

const BAD: &str = r#"http:
  port: 8080
apiEndpoints:
  a:
    paths: '/a/*'
  rx:
    pathRegex: '(unclosed'
serviceEndpoints:
  both:
    url: 'http://x'
    urls: ['http://y']
  neither:
    proxyOptions: {}
  good:
    url: 'http://127.0.0.1:1'
policies:
  - proxy
  - cors
  - oauth2
  - nosuch
pipelines:
  p1:
    apiEndpoints: [a]
    policies:
      - rate-limit:
      - proxy:
          - action:
              serviceEndpoint: missing
  p2:
    apiEndpoints: [a]
    policies:
      - cors:
          - condition:
              name: expression
              expression: 'req.url'
      - cors:
          - condition: {name: weird}
      - proxy:
          - action:
              serviceEndpoint: good
              stripPath: 'yes'
"#;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `tollgate check` on a config that has errors: it exits 2; what it printed.
fn check_errors(dir: &ConfigDir) -> String {
    let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn check_accepts_the_shipped_conf() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");
    let out = run_tollgate(&["check", "--config", conf], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (4 apiEndpoints"));
}

#[test]
fn check_reports_every_error_with_its_position() {
    let dir = ConfigDir::new(BAD);
    let out = run_tollgate(&["check", "--config", &dir.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let file = dir.file("gateway.config.yml");
    let expected = [
        "7:16: bad regex in pathRegex of apiEndpoint `rx`: unclosed group",
        "9:3: serviceEndpoint `both` has both `url` and `urls`; use one",
        "12:3: serviceEndpoint `neither` needs `url` or `urls`",
        "19:5: policy `oauth2`: oauth2 is not supported by tollgate",
        "20:5: unknown policy `nosuch`",
        "25:9: policy `rate-limit` is used in pipeline `p1` but not declared in `policies`",
        "28:32: policy `proxy`: unknown serviceEndpoint `missing`",
        "34:21: condition `expression` is not supported by tollgate",
        "37:31: unknown condition `weird`",
        "41:26: policy `proxy` `stripPath`: invalid type: string \"yes\", expected a boolean",
    ];
    for e in expected {
        assert!(
            err.contains(&format!("{file}:{e}")),
            "missing `{file}:{e}` in:\n{err}"
        );
    }
}

/// An error after a `${VAR}` whose value is not as long as the reference, or spans lines, is
/// reported where it is in the file, not in the interpolated text the parser read.
#[test]
fn positions_after_an_interpolated_value_are_the_files() {
    let proxy_line =
        r#"      - proxy: [{action: {serviceEndpoint: '${TG_SE}', stripPath: "yes"}}]"#;
    let yml = format!(
        "http: {{port: 8080}}\napiEndpoints: {{a: {{paths: '/a'}}}}\nserviceEndpoints: {{up: {{url: 'http://127.0.0.1:1'}}}}\npolicies: [log, proxy]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - log: [{{action: {{message: \"${{TG_NOTE}}\"}}}}]\n{proxy_line}\n      - nosuch:\n"
    );
    let dir = ConfigDir::new(&yml);
    let out = run_tollgate(
        &["check", "-c", &dir.path.display().to_string()],
        &[
            ("TG_SE", "up"),
            ("TG_NOTE", "one\n          two\n          three"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    let file = dir.file("gateway.config.yml");
    let col = proxy_line.find("\"yes\"").expect("yes") + 1;
    for expected in [
        format!("{file}:10:{col}: policy `proxy` `stripPath`"),
        format!("{file}:11:9: policy `nosuch` is used in pipeline `p` but not declared"),
    ] {
        assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");
    }
}

/// Two listeners on one port of one address, and a second YAML document, are errors `check`
/// reports where they are written (the first would fail the start with a bind error, the
/// second was ignored without a word).
#[test]
fn one_port_twice_and_a_second_document_are_reported_where_written() {
    let dir = ConfigDir::new("http:\n  port: 28690\nadmin:\n  host: 127.0.0.1\n  port: 28690\n");
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.yml");
    assert!(
        err.contains(&format!(
            "{file}:5:9: `admin` listens on port 28690 as `http` does"
        )),
        "{err}"
    );
    // One address by two names (`localhost`, where it is first the loopback address the
    // admin listener takes by default): the kernel shared the port, splitting connections
    // between the gateway and the Admin API.
    let dir =
        ConfigDir::new("http:\n  port: 28690\n  hostname: localhost\nadmin:\n  port: 28690\n");
    let file = dir.file("gateway.config.yml");
    let localhost = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 28690))
        .expect("resolve localhost")
        .next()
        .map(|a| a.ip());
    let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
    let clash = format!("{file}:5:9: `admin` listens on port 28690 as `http` does");
    if localhost == Some(std::net::Ipv4Addr::LOCALHOST.into()) {
        assert!(stderr(&out).contains(&clash), "{}", stderr(&out));
    } else {
        // (Bound to another address: both can listen.)
        assert!(!stderr(&out).contains(&clash), "{}", stderr(&out));
    }
    // Other addresses of one port are no clash (the admin listener's default address is
    // the loopback one).
    for yml in [
        "http:\n  host: 127.0.0.1\n  port: 28690\nadmin:\n  host: 127.0.0.2\n  port: 28690\n",
        "http:\n  host: 127.0.0.2\n  port: 28690\nadmin:\n  port: 28690\n",
    ] {
        let dir = ConfigDir::new(yml);
        let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
        assert_eq!(out.status.code(), Some(0), "{yml}: {}", stderr(&out));
    }
    let dir = ConfigDir::new("http:\n  port: 28690\n---\nhttp:\n  port: 1\n");
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.yml");
    assert!(
        err.contains(&format!("{file}:4:")) && err.contains(": a second YAML document"),
        "{err}"
    );
}

/// What would have taken the gateway down or cut a config short is a config error at its
/// place: collections nested thousands deep (a stack overflow aborted `check`, and the
/// running gateway on a reload), a NUL or another control character (the reader stopped there
/// and the rest of the file was ignored: `valid (…, 0 pipelines)`), a system config that is a
/// directory or a dangling link (read as no system config: the embedded store and defaults).
#[test]
fn deep_nesting_control_characters_and_unreadable_system_files_are_errors() {
    let base = "http: {port: 8080}\napiEndpoints:\n  a: {paths: '/a/*'}\n";
    let dir = ConfigDir::new(&format!("{base}x:\n  {}1\n", "- ".repeat(3000)));
    let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let file = dir.file("gateway.config.yml");
    assert!(
        stderr(&out).contains(&format!("{file}:5:"))
            && stderr(&out).contains("nested more than 100 deep"),
        "{}",
        stderr(&out)
    );
    for (byte, col) in [("\u{0}", 1), ("\u{7}", 1), ("\u{7f}", 1)] {
        let dir = ConfigDir::new(&format!("{base}{byte}pipelines: {{}}\n"));
        let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
        assert_eq!(out.status.code(), Some(2), "{byte:?}: {}", stderr(&out));
        let file = dir.file("gateway.config.yml");
        assert!(
            stderr(&out).contains(&format!(
                "{file}:4:{col}: invalid YAML: a control character"
            )),
            "{byte:?}: {}",
            stderr(&out)
        );
    }
    // Tabs, carriage returns: fine.
    let dir = ConfigDir::new("http:\r\n  port: 8080 \t\r\n");
    let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for broken in ["a directory", "a dangling link"] {
        let dir = ConfigDir::new(base);
        let system = dir.path.join("system.config.yml");
        std::fs::remove_file(&system).expect("remove");
        match broken {
            "a directory" => std::fs::create_dir(&system).expect("dir"),
            _ => std::os::unix::fs::symlink(dir.path.join("gone.yml"), &system).expect("link"),
        }
        let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
        assert_eq!(out.status.code(), Some(2), "{broken}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("{}:", system.display()))
                && stderr(&out).contains("cannot read the file"),
            "{broken}: {}",
            stderr(&out)
        );
    }
}

/// A key that is no section (EG ignores it, and so does tollgate) is said where it is, with
/// the section it looks like: `piplines` left every route without its pipeline, silently.
#[test]
fn a_key_that_is_no_section_is_said() {
    let dir = ConfigDir::new(
        "http: {port: 8080}\napiEndpoints:\n  a: {paths: '/a/*'}\npiplines:\n  p: {apiEndpoints: [a], policies: []}\nextra: 1\n",
    );
    let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let file = dir.file("gateway.config.yml");
    let said = stderr(&out);
    assert!(
        said.contains(&format!("{file}:4:1: `piplines` is no section of the gateway config and is ignored (`pipelines`?)")),
        "{said}"
    );
    assert!(
        said.contains("`extra` is no section") && !said.contains("(`extra`"),
        "{said}"
    );
    // The system config's too: a misspelt `plugin:` left Kargo's metrics and storage plugins
    // unconfigured, silently.
    dir.write(
        "system.config.yml",
        "db: {redis: {emulate: true}}\ncrypto: {saltRounds: 10}\nsession: {}\ncli: {url: 'http://localhost:9876'}\nplugin:\n  metrics: {}\n",
    );
    let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = stderr(&out);
    let system = dir.file("system.config.yml");
    assert!(
        said.contains(&format!(
            "{system}:5:1: `plugin` is no section of the system config and is ignored (`plugins`?)"
        )),
        "{said}"
    );
    assert_eq!(
        said.matches("is no section of the system config").count(),
        1,
        "{said}"
    );
    // Within the sections too: a misspelt `scopes` left the endpoint open to every consumer,
    // a misspelt `condition` ran its step for every request.
    let dir = ConfigDir::new(
        "http: {port: 8080}\napiEndpoints:\n  a: {paths: '/a/*', scope: [wms]}\nserviceEndpoints:\n  s: {url: 'http://127.0.0.1:1', proxyOption: {}}\npolicies: [terminate]\npipelines:\n  p:\n    apiEndpoints: [a]\n    polices: []\n    policies:\n      - terminate: [{conditon: {name: never}, action: {statusCode: 200}}]\n",
    );
    let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let file = dir.file("gateway.config.yml");
    let said = stderr(&out);
    for line in [
        "3:22: `scope` is no field of an apiEndpoint and is ignored (`scopes`?)",
        "5:34: `proxyOption` is no field of a serviceEndpoint and is ignored (`proxyOptions`?)",
        "10:5: `polices` is no field of a pipeline and is ignored (`policies`?)",
        "12:22: `conditon` is no part of a policy step and is ignored (`condition`?)",
    ] {
        assert!(said.contains(&format!("{file}:{line}")), "{line}: {said}");
    }
}

#[test]
fn syntax_errors_and_missing_files() {
    let dir = ConfigDir::empty();
    dir.write("gateway.config.yml", "http:\n  port: [1, 2\n");
    let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!(
            "{}:3:1: invalid YAML",
            dir.file("gateway.config.yml")
        )),
        "{}",
        stderr(&out)
    );
    let empty = ConfigDir::empty();
    let out = run_tollgate(&["check", "-c", &empty.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no gateway.config.yml"));
    // A file given for the directory is said as that.
    let out = run_tollgate(&["check", "-c", &dir.file("gateway.config.yml")], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a directory: give the config directory"),
        "{}",
        stderr(&out)
    );
    // A key given twice in one map (EG's YAML reader refuses it): at the second.
    dir.write(
        "gateway.config.yml",
        "http: {port: 8080}\npipelines:\n  p: {apiEndpoints: [a], policies: []}\npipelines:\n  q: {apiEndpoints: [a], policies: []}\n",
    );
    let err = check_errors(&dir);
    assert!(
        err.contains(&format!(
            "{}:4:1: duplicated mapping key `pipelines` (first at line 2)",
            dir.file("gateway.config.yml")
        )),
        "{err}"
    );
    // A pipeline without `policies` (a misspelt key), as EG's schema says.
    dir.write(
        "gateway.config.yml",
        "http: {port: 8080}\napiEndpoints: {a: {paths: '/a'}}\npipelines:\n  p:\n    apiEndpoints: [a]\n    polices: []\n",
    );
    let err = check_errors(&dir);
    assert!(err.contains("4:3: pipeline `p` needs `policies`"), "{err}");
    // A models file `serve` cannot read fails the check too, at its own position, beside the
    // config's own errors.
    dir.write(
        "gateway.config.yml",
        "http: {port: 8080}\napiEndpoints: {a: {paths: '/a', methods: 7}}\n",
    );
    std::fs::create_dir_all(dir.path.join("models")).expect("models");
    dir.write("models/users.json", "{\n  \"type\": \"object\",\n}\n");
    let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "{}:3:1: invalid JSON",
            dir.file("models/users.json")
        )) && stderr(&out).contains("`methods`"),
        "{}",
        stderr(&out)
    );
    // serve refuses a bad config the same way.
    let bad = ConfigDir::new(BAD);
    let out = run_tollgate(&["serve", "-c", &bad.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown serviceEndpoint `missing`"));
}

#[test]
fn wrong_types_and_bad_values_are_errors_not_panics() {
    let dir = ConfigDir::new(
        "http: {port: 70000}\napiEndpoints: [1, 2]\nserviceEndpoints:\n  s: {url: 'ftp://x'}\n  t: {url: 'not a url'}\n  u: {url: 'http://tiles:hunter2@127.0.0.1:1/wms?token=t0ps3cret'}\n  v: {urls: ['http://127.0.0.1:99999/wms', 'http://[::1]:0/', 'https://h:443/']}\npolicies: proxy\npipelines:\n  p: {apiEndpoints: x, policies: [{terminate: 7}, {log: {action: {message: '${req.nope}'}}}, 3]}\n",
    );
    let err = check_errors(&dir);
    // A URL in an error shows no password and no query.
    assert!(
        !err.contains("hunter2") && !err.contains("t0ps3cret"),
        "{err}"
    );
    for needle in [
        "6:12: serviceEndpoint `u`: `http://***@127.0.0.1:1/wms?…`: credentials in the URL are not supported",
        "1:14: `http.port` must be a port number (0-65535), not 70000",
        "2:15: `apiEndpoints` must be a map, not a list",
        "4:12: serviceEndpoint `s`: `ftp://x`: scheme `ftp` is not supported",
        "5:12: serviceEndpoint `t`: `not a url` is not a valid URL",
        "7:14: serviceEndpoint `v`: `http://127.0.0.1:99999/wms`: `99999` is not a port number (1-65535)",
        "7:44: serviceEndpoint `v`: `http://[::1]:0/`: `0` is not a port number (1-65535)",
        "policy `terminate` in pipeline `p` must hold a step or a list of steps",
        "a policy in pipeline `p` must be `- name:` with its steps",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
    // The port's own error says why the gateway would listen nowhere: once.
    assert!(!err.contains("no port"), "{err}");
    // An admin listener's error says nothing of the gateway's: it still listens nowhere.
    let dir = ConfigDir::new("admin: {port: 99999}\napiEndpoints: {}\n");
    let err = check_errors(&dir);
    assert!(
        err.contains("`admin.port` must be a port number")
            && err.contains("no `http` or `https` section"),
        "{err}"
    );
}

/// An api endpoint or its `scopes` left null (its lines commented out) is an error, as EG's
/// schema has it: a null endpoint matched every request ahead of the authenticated ones, and
/// null scopes let every consumer through. On a reload the running config stays.
#[test]
fn an_endpoint_or_its_scopes_commented_out_is_an_error() {
    let good = "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints:\n  legacy:\n    paths: '/old/*'\n  tiles: {paths: '/wms*', scopes: [wms]}\nserviceEndpoints:\n  up: {url: 'http://127.0.0.1:9'}\npolicies: [key-auth, proxy]\npipelines:\n  legacy: {apiEndpoints: [legacy], policies: [{proxy: [{action: {serviceEndpoint: up}}]}]}\n  tiles: {apiEndpoints: [tiles], policies: [{key-auth: }, {proxy: [{action: {serviceEndpoint: up}}]}]}\n";
    let dir = ConfigDir::new(good);
    let gw = GatewayProcess::start(&dir);
    assert_eq!(get(gw.port, "GET", "/wms?SERVICE=WMS", &[]).status, 401);
    for (bad, needle) in [
        (
            good.replace("    paths: '/old/*'\n", "    # paths: '/old/*'\n"),
            "4:3: apiEndpoint `legacy` must be a map (or a list of maps), not null",
        ),
        (
            good.replace("    paths: '/old/*'\n", "    - ~\n"),
            "5:7: apiEndpoint `legacy` must be a map (or a list of maps), not null",
        ),
        (
            good.replace("scopes: [wms]", "scopes: "),
            "6:33: `scopes` of apiEndpoint `tiles` must be a scope or a list of them, not null",
        ),
    ] {
        dir.write("gateway.config.yml", &bad);
        let err = check_errors(&dir);
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
        let r = support::send_json(gw.admin_port, "POST", "/tollgate/reload", "");
        assert_eq!(r.status, 422, "{}", r.text());
        assert_eq!(get(gw.port, "GET", "/wms?SERVICE=WMS", &[]).status, 401);
    }
}

#[test]
fn cache_step_values_out_of_range_are_errors_with_their_position() {
    let dir = ConfigDir::new(
        "http: {port: 1}\napiEndpoints: {a: {}}\nserviceEndpoints: {s: {url: 'http://127.0.0.1:1'}}\npolicies: [cache, proxy]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - cache: [{action: {minUses: 0}}]\n      - proxy: [{action: {serviceEndpoint: s}}]\n  q:\n    apiEndpoints: [a]\n    policies:\n      - cache: [{action: {minUses: 16, ttl: 5}}]\n      - proxy: [{action: {serviceEndpoint: s}}]\n  r:\n    apiEndpoints: [a]\n    policies:\n      - cache: [{action: {maxObjectSize: 209715200}}]\n      - proxy: [{action: {serviceEndpoint: s}}]\n",
    );
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.yml");
    for (line, why) in [
        (9, "`minUses` must be between 1 and 15"),
        (14, "`minUses` must be between 1 and 15"),
        // (An object the memory tier cannot weigh was read whole, then not kept.)
        (19, "`maxObjectSize` must be at most 62914560"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("{file}:{line}:")) && l.contains(why)),
            "no error at line {line} in:\n{err}"
        );
    }
}

/// Every problem of one `cache` step at once, each at its value (they came one at a time, as
/// each was mended, all at the step).
#[test]
fn every_problem_of_a_cache_step_is_reported_at_its_value() {
    let step = "      - cache: [{action: {ttl: 3600, statuses: [206], minUses: 16, lockTimeout: 601, maxObjectSize: 0}}]";
    let dir = ConfigDir::new(&format!(
        "http: {{port: 1}}\napiEndpoints: {{a: {{}}}}\nserviceEndpoints: {{s: {{url: 'http://127.0.0.1:1'}}}}\npolicies: [cache, proxy]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n{step}\n      - proxy: [{{action: {{serviceEndpoint: s}}}}]\n"
    ));
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.yml");
    for (param, why) in [
        ("statuses", "`statuses`: 206 answers one request only"),
        ("minUses", "`minUses` must be between 1 and 15"),
        (
            "lockTimeout",
            "`lockTimeout` must be between 0 and 600 seconds",
        ),
        ("maxObjectSize", "`maxObjectSize` must be more than 0"),
    ] {
        // (Columns count from 1; the value follows its name and `: `.)
        let column = step.find(&format!("{param}: ")).expect("in the step") + param.len() + 3;
        let at = format!("{file}:9:{column}: ");
        assert!(
            err.lines().any(|l| l.starts_with(&at) && l.contains(why)),
            "no `{why}` at {at} in:\n{err}"
        );
    }
}

#[test]
fn a_cache_step_stores_only_statuses_that_answer_the_next_request() {
    let dir = ConfigDir::new(
        "http: {port: 1}\napiEndpoints: {a: {}}\nserviceEndpoints: {s: {url: 'http://127.0.0.1:1'}}\npolicies: [cache, proxy]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - cache: [{action: {statuses: [200, 304]}}]\n      - proxy: [{action: {serviceEndpoint: s}}]\n  q:\n    apiEndpoints: [a]\n    policies:\n      - cache: [{action: {statuses: [103]}}]\n      - proxy: [{action: {serviceEndpoint: s}}]\n  r:\n    apiEndpoints: [a]\n    policies:\n      - cache: [{action: {statuses: [206]}}]\n      - proxy: [{action: {serviceEndpoint: s}}]\n  t:\n    apiEndpoints: [a]\n    policies:\n      - cache: [{action: {statuses: [600]}}]\n      - proxy: [{action: {serviceEndpoint: s}}]\n",
    );
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.yml");
    for (line, reason) in [
        (
            9,
            "`statuses`: 304 answers one request only (a range, a condition), it cannot be stored",
        ),
        (
            14,
            "`statuses`: 103 is an interim answer, it cannot be stored (statuses are 200 to 599)",
        ),
        (
            19,
            "`statuses`: 206 answers one request only (a range, a condition), it cannot be stored",
        ),
        (24, "`statuses`: 600 is not an HTTP status"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("{file}:{line}:")) && l.contains(reason)),
            "no `{reason}` at line {line} in:\n{err}"
        );
    }
}

#[test]
fn a_status_the_gateway_answers_with_must_be_a_final_one() {
    let dir = ConfigDir::new(
        "http: {port: 1}\napiEndpoints: {a: {}}\npolicies: [terminate, rate-limit]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - rate-limit: [{action: {max: 1, statusCode: 100}}]\n      - terminate: [{action: {statusCode: 101}}]\n",
    );
    let err = check_errors(&dir);
    for needle in [
        "8:52: policy `rate-limit`: `statusCode` 100 is not a final HTTP status (200–599)",
        "9:43: policy `terminate`: `statusCode` 101 is not a final HTTP status (200–599)",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
}

#[test]
fn unsupported_value_expressions_are_named() {
    let dir = ConfigDir::new(
        "http: {port: 1}\napiEndpoints: {a: {}}\npolicies: [response-transformer]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - response-transformer:\n          - action: {headers: {add: {X-A: Basic, X-B: \"require('fs')\", X-K: ${GEOSERVER_KEY}}}}\n",
    );
    let out = run_tollgate(
        &["check", "-c", &dir.path.display().to_string()],
        &[("GEOSERVER_KEY", "c2VjcmV0LWtleS0xMjM0NQ")],
    );
    let err = stderr(&out);
    // A long word left unquoted (a key put in from the environment) is not repeated whole.
    assert!(!err.contains("c2VjcmV0LWtleS0xMjM0NQ"), "{err}");
    assert!(
        err.contains(
            "`c2V… (22 characters; a literal is quoted)` is not a supported value expression"
        ),
        "{err}"
    );
    assert!(err.contains("9:43: value of header `X-A`"), "{err}");
    assert!(
        err.contains("`Basic` is not a supported value expression"),
        "{err}"
    );
    assert!(
        err.contains("`require('fs')` is not a supported value expression"),
        "{err}"
    );
}

/// A literal no header can carry (a line break; a character past U+00FF) is refused where it
/// is written: EG's `setHeader` throws on every request; a Latin-1 letter is written as Node
/// writes it.
#[test]
fn a_literal_no_header_can_carry_is_an_error() {
    let dir = ConfigDir::new(
        "http: {port: 1}\napiEndpoints: {a: {}}\npolicies: [request-transformer]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - request-transformer:\n          - action: {headers: {add: {X-A: \"'a\\nb'\", X-B: \"'caf\u{e9}'\", X-C: \"'\u{20ac}'\"}}}\n",
    );
    let err = check_errors(&dir);
    assert!(err.contains("9:43: value of header `X-A`"), "{err}");
    assert!(
        err.contains("its character 2 (U+000A) cannot be in a header value"),
        "{err}"
    );
    assert!(!err.contains("`X-B`"), "{err}");
    assert!(err.contains("value of header `X-C`"), "{err}");
}

/// A JSON config is read as YAML reads it, with positions: a key given twice is an error
/// where it is (as EG's reader has it), and the errors after it keep their lines.
#[test]
fn a_json_config_with_a_key_given_twice_is_refused_where_it_is() {
    let dir = ConfigDir::empty();
    dir.write(
        "gateway.config.json",
        "{\"http\": {\"port\": 28690},\n \"apiEndpoints\": {\"wms\": {\"paths\": \"/a\"},\n   \"wms\": {\"paths\": \"/b\"}}}\n",
    );
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.json");
    assert!(err.contains(&format!("{file}:3:")), "{err}");
    assert!(!err.contains(&format!("{file}:1:1:")), "{err}");
}

/// A `jwt` step's key problem is reported at the key's parameter, not at the step.
#[test]
fn a_jwt_key_problem_is_reported_at_its_parameter() {
    let dir = ConfigDir::new(
        "http: {port: 28690}\napiEndpoints:\n  a: {paths: '/a/*'}\npolicies: [jwt]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - jwt:\n          - action:\n              checkCredentialExistence: false\n              secretOrPublicKeyFile: /no/such/key.pem\n              algorithms: [HS256]\n",
    );
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.yml");
    assert!(
        err.contains(&format!(
            "{file}:12:38: policy `jwt`: cannot read `secretOrPublicKeyFile`"
        )),
        "{err}"
    );
}

/// An empty `algorithms` list is a config error (it panicked: at start, and on a reload the
/// file watcher's thread, after which file changes went unnoticed).
#[test]
fn an_empty_jwt_algorithms_list_is_an_error() {
    let dir = ConfigDir::new(
        "http: {port: 28690}\napiEndpoints:\n  a: {paths: '/a/*'}\npolicies: [jwt]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - jwt:\n          - action:\n              checkCredentialExistence: false\n              secretOrPublicKey: s3cret\n              algorithms: []\n",
    );
    let err = check_errors(&dir);
    assert!(err.contains("policy `jwt`: `algorithms` is empty"), "{err}");
}

/// A preflight status that is no final one is a config error (`100` left every preflight
/// without a final answer).
#[test]
fn a_cors_preflight_status_must_be_a_final_one() {
    let dir = ConfigDir::new(
        "http: {port: 28690}\napiEndpoints:\n  a: {paths: '/a/*'}\npolicies: [cors]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - cors: [{action: {optionsSuccessStatus: 100}}]\n",
    );
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.yml");
    assert!(
        err.contains(&format!("{file}:9:"))
            && err.contains("`optionsSuccessStatus` 100 is not a final HTTP status"),
        "{err}"
    );
}

/// Parameters written as strings are taken as the numbers and booleans they spell, and
/// numbers where text is wanted as their text, as EG's schema check (ajv, `coerceTypes`) does:
/// a quoted `'${VAR}'` gives a string. So are `1` and `0` where a boolean is wanted, a whole
/// number written as a float (`6e4`), and null (an unset `${VAR}`) as `false`, `0` or `''`:
/// EG starts with them, tollgate refused them.
#[test]
fn quoted_numbers_and_booleans_are_taken_as_eg_takes_them() {
    let up = support::EchoUpstream::start("up");
    let dir = ConfigDir::new(&format!(
        "http: {{port: ${{PORT}}}}\napiEndpoints:\n  q: {{paths: '/q/*'}}\n  s: {{paths: '/s/*'}}\n  t: {{paths: '/t/*'}}\n  p: {{paths: '/p/*'}}\n  r: {{paths: '/r/*'}}\nserviceEndpoints:\n  up: {{url: '{up}'}}\npolicies: [terminate, proxy, cors, rate-limit]\npipelines:\n  q:\n    apiEndpoints: [q]\n    policies:\n      - rate-limit: [{{action: {{max: 1.0, windowMs: 6e4, rateLimitBy: q}}}}]\n      - proxy: [{{action: {{serviceEndpoint: up, stripPath: 1, changeOrigin: 0, timeout: 3e4}}}}]\n  s:\n    apiEndpoints: [s]\n    policies:\n      - terminate: [{{action: {{statusCode: 200, message: ${{TG_UNSET_MESSAGE}}}}}}]\n  t:\n    apiEndpoints: [t]\n    policies:\n      - cors: [{{action: {{origin: 'https://a.example', credentials: 'true', maxAge: '600'}}}}]\n      - terminate: [{{action: {{statusCode: '401', message: 123}}}}]\n  p:\n    apiEndpoints: [p]\n    policies:\n      - proxy: [{{action: {{serviceEndpoint: up, stripPath: 'true', headers: {{X-Num: 5}}}}}}]\n  r:\n    apiEndpoints: [r]\n    policies:\n      - rate-limit: [{{action: {{max: '1', windowMs: '60000'}}}}]\n      - terminate: [{{action: {{statusCode: 200, message: ok}}}}]\n",
        up = up.url("")
    ));
    let gw = GatewayProcess::start(&dir);
    let r = get(gw.port, "GET", "/t/x", &[("Origin", "https://a.example")]);
    assert_eq!((r.status, r.text().as_str()), (401, "123"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let r = get(gw.port, "GET", "/p/x", &[]);
    assert_eq!(r.echoed().url(), "/x", "stripPath: 'true'");
    assert_eq!(r.echoed().header("x-num").as_deref(), Some("5"));
    let statuses: Vec<u16> = (0..2)
        .map(|_| get(gw.port, "GET", "/r/x", &[]).status)
        .collect();
    assert_eq!(statuses, [200, 429], "max: '1'");
    let r = get(gw.port, "GET", "/q/x", &[("Host", "client.example")]);
    assert_eq!(r.echoed().url(), "/x", "stripPath: 1");
    assert_eq!(
        r.echoed().header("host").as_deref(),
        Some("client.example"),
        "changeOrigin: 0"
    );
    assert_eq!(get(gw.port, "GET", "/q/x", &[]).status, 429, "max: 1.0");
    let r = get(gw.port, "GET", "/s/x", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, ""), "message: null");
    // Said where it happens.
    assert!(
        gw.log_text().contains("policy `terminate` `message`: null (a key left empty, or an unset variable) is read as ''"),
        "{}",
        gw.log_text()
    );
    // Not where EG's schema types nothing: a boolean for a proxy timeout (EG's http-proxy
    // fails every request with it), null for a header's value.
    for action in ["proxyTimeout: true", "headers: {X-Foo: }"] {
        let dir = ConfigDir::new(&format!(
            "http: {{port: 28698}}\napiEndpoints: {{a: {{paths: '/a/*'}}}}\nserviceEndpoints: {{up: {{url: 'http://127.0.0.1:1'}}}}\npolicies: [proxy]\npipelines:\n  p: {{apiEndpoints: [a], policies: [{{proxy: {{action: {{serviceEndpoint: up, {action}}}}}}}]}}\n"
        ));
        let err = check_errors(&dir);
        assert!(err.contains("policy `proxy`"), "{action}: {err}");
    }
    // Where EG's schema types a number, a boolean is one (`max: true` is 1).
    let dir = ConfigDir::new(
        "http: {port: 28699}\napiEndpoints: {a: {paths: '/a/*'}}\npolicies: [rate-limit, terminate]\npipelines:\n  p: {apiEndpoints: [a], policies: [{rate-limit: {action: {max: true}}}, {terminate: {action: {statusCode: 200}}}]}\n",
    );
    let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Of `gateway.config.json` and `.yaml` side by side, the one EG reads (`.json`: EG reads no
/// `.yaml`) is read, and the other is named in a warning: an operator editing it would see
/// nothing change.
#[test]
fn of_two_config_files_the_one_eg_reads_is_read_and_the_other_named() {
    let dir = ConfigDir::empty();
    dir.write(
        "gateway.config.json",
        r#"{"http": {"port": 28001}, "apiEndpoints": {}}"#,
    );
    dir.write("gateway.config.yaml", "http: {port: 'not a port'}\n");
    let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("gateway.config.yaml: not read: ") && said.contains("gateway.config.json is"),
        "{said}"
    );
}

#[test]
fn env_interpolation_json_config_and_eg_config_dir() {
    let up = support::EchoUpstream::start("up");
    let dir = ConfigDir::empty();
    dir.write(
        "gateway.config.json",
        r#"{"http": {"port": ${PORT}}, "admin": {"port": ${ADMIN_PORT}, "host": "127.0.0.1"},
 "apiEndpoints": {"e": {"paths": "${TG_PATH:-/env/*}"}},
 "serviceEndpoints": {"up": {"url": "${TG_UPSTREAM}"}},
 "policies": ["proxy", "response-transformer"],
 "pipelines": {"p": {"apiEndpoints": ["e"], "policies": [
   {"response-transformer": {"action": {"headers": {"add": {"X-Literal": "'$${NOT_EXPANDED}'", "X-Empty": "'${TG_EMPTY:-fallback}'"}}}}},
   {"proxy": {"action": {"serviceEndpoint": "up"}}}]}}}"#,
    );
    dir.write(
        "system.config.json",
        r#"{"db": {"redis": {"emulate": true}}}"#,
    );
    let gw =
        GatewayProcess::start_with(&dir, &[], &[("TG_UPSTREAM", &up.url("")), ("TG_EMPTY", "")]);
    let r = get(gw.port, "GET", "/env/x", &[]);
    assert_eq!(r.echoed().url(), "/env/x");
    assert_eq!(r.header("x-literal"), Some("$${NOT_EXPANDED}"));
    assert_eq!(
        r.header("x-empty"),
        Some(""),
        "a set-but-empty variable wins over the default"
    );
    // EG_CONFIG_DIR names the directory when --config is absent.
    let out = run_tollgate(
        &["check"],
        &[
            ("EG_CONFIG_DIR", &dir.path.display().to_string()),
            ("TG_UPSTREAM", "http://127.0.0.1:1"),
            ("PORT", "28693"),
            ("ADMIN_PORT", "28694"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn help_on_every_command() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["check", "--help"],
    ] {
        let out = run_tollgate(&args, &[]);
        assert_eq!(out.status.code(), Some(0));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: tollgate"),
            "{args:?}"
        );
    }
    let out = run_tollgate(&["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_wrong_proxy_option_is_reported_where_it_is_written() {
    let dir = ConfigDir::new(
        "http: {port: 1}\napiEndpoints: {a: {}}\nserviceEndpoints:\n  s:\n    url: 'http://127.0.0.1:9'\n    proxyOptions:\n      xfwd: 'yes'\npolicies: [proxy]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - proxy: [{action: {serviceEndpoint: s}}]\n",
    );
    let err = check_errors(&dir);
    assert!(
        err.contains(
            "7:13: policy `proxy` `xfwd`: invalid type: string \"yes\", expected a boolean"
        ),
        "{err}"
    );
}

/// Weights past the bound are refused where they are written (round-robin walks a list as
/// long as their sum: a weight of 4,000,000,000 asked for 32 GB at load, and a reload with it
/// ended the running gateway).
#[test]
fn a_weight_past_the_bound_is_an_error_with_its_position() {
    let dir = ConfigDir::new(
        "http: {port: 8080}\napiEndpoints:\n  t: {paths: '/t/*'}\nserviceEndpoints:\n  s:\n    urls: ['http://127.0.0.1:1', 'http://127.0.0.1:2']\n    tollgate: {weights: [4000000000, 1]}\npolicies: [proxy]\npipelines:\n  p: {apiEndpoints: [t], policies: [{proxy: {action: {serviceEndpoint: s}}}]}\n",
    );
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.yml");
    assert!(
        err.contains(&format!("{file}:7:")) && err.contains("a weight of 4000000000: at most 1000"),
        "{err}"
    );
}

/// A storage route that cannot be built is an error where the file says what is wrong, not a
/// route silently left out (on a reload, the running config's route stays).
#[test]
fn a_storage_plugin_without_providers_or_with_a_bad_endpoint_is_an_error_with_its_position() {
    let dir = ConfigDir::new("http: {port: 8080}\napiEndpoints: {}\n");
    let file = dir.file("system.config.yml");
    dir.write(
        "system.config.yml",
        "plugins:\n  storage:\n    package: './plugins/storage/manifest.js'\n",
    );
    let err = check_errors(&dir);
    assert!(
        err.contains(&format!("{file}:3:"))
            && err.contains("plugin `storage` needs `providers`: a map of S3 providers"),
        "{err}"
    );
    dir.write(
        "system.config.yml",
        "plugins:\n  s3:\n    accessKeyId: a\n    secretAccessKey: b\n    endpoint: 'ftp://x'\n",
    );
    let err = check_errors(&dir);
    assert!(
        err.contains(&format!("{file}:5:")) && err.contains("plugin `s3` `endpoint`"),
        "{err}"
    );
}

/// A plugin's `endpointName` is a route as Express compiles it: one it could not compile is an
/// error at its place.
#[test]
fn a_plugin_route_that_is_no_pattern_is_an_error_with_its_position() {
    let dir = ConfigDir::new("http: {port: 8080}\napiEndpoints: {}\n");
    let file = dir.file("system.config.yml");
    dir.write(
        "system.config.yml",
        "plugins:\n  metrics:\n    endpointName: '/metrics(x'\n",
    );
    let err = check_errors(&dir);
    assert!(
        err.contains(&format!("{file}:3:")) && err.contains("`endpointName` `/metrics(x`"),
        "{err}"
    );
}

/// One storage provider may be the default, by `default: true`: two are an error at the second
/// (the last one won), and a `default` that is no boolean is one (`'true'` was ignored).
#[test]
fn storage_providers_default_is_one_and_a_boolean() {
    let dir = ConfigDir::new("http: {port: 8080}\napiEndpoints: {}\n");
    let file = dir.file("system.config.yml");
    let providers = |a: &str, b: &str| {
        format!("plugins:\n  storage:\n    providers:\n      a:\n        accessKeyId: k\n        secretAccessKey: s\n        default: {a}\n      b:\n        accessKeyId: k\n        secretAccessKey: s\n        default: {b}\n")
    };
    dir.write("system.config.yml", &providers("true", "true"));
    let err = check_errors(&dir);
    assert!(
        err.contains(&format!("{file}:11:"))
            && err.contains("storage providers `a` and `b` are both `default: true`"),
        "{err}"
    );
    dir.write("system.config.yml", &providers("false", "'yes'"));
    let err = check_errors(&dir);
    assert!(
        err.contains(&format!("{file}:11:"))
            && err.contains("storage provider `b`: `default` is true or false"),
        "{err}"
    );
    // `'true'` (a `${VAR}` in quotes) is true, as EG's schema coerces it.
    for (a, b) in [("false", "true"), ("'false'", "'true'")] {
        dir.write("system.config.yml", &providers(a, b));
        let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
        assert_eq!(out.status.code(), Some(0), "{b}: {}", stderr(&out));
    }
    dir.write("system.config.yml", &providers("'true'", "true"));
    assert!(check_errors(&dir).contains("both `default: true`"));
}

/// `cors`'s `exposedHeaders` is a list, as EG's schema has it: a string is an error at its
/// place (EG refuses the config; tollgate took it).
#[test]
fn cors_exposed_headers_is_a_list() {
    let yaml = |exposed: &str| {
        format!("http: {{port: 8080}}\napiEndpoints: {{a: {{}}}}\npolicies: [cors, terminate]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - cors: [{{action: {{exposedHeaders: {exposed}}}}}]\n      - terminate: [{{action: {{statusCode: 200}}}}]\n")
    };
    let dir = ConfigDir::new(&yaml("'X-Cache-Status,Age'"));
    let err = check_errors(&dir);
    assert!(
        err.contains(&format!("{}:8:", dir.file("gateway.config.yml")))
            && err.contains("`exposedHeaders`"),
        "{err}"
    );
    dir.write("gateway.config.yml", &yaml("[X-Cache-Status, Age]"));
    let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A number YAML has and JSON has not (`.nan`, `.inf`, `1e999`) is an error where a number
/// is asked for: it read as null, which every optional parameter takes as not set.
#[test]
fn numbers_that_are_not_finite_are_errors_not_unset() {
    let dir = ConfigDir::new(
        "http: {port: 8080}\napiEndpoints: {a: {}}\nserviceEndpoints: {s: {url: 'http://127.0.0.1:1'}}\npolicies: [rate-limit, proxy]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - rate-limit: [{action: {max: 1, delayMs: .nan}}]\n      - proxy: [{action: {serviceEndpoint: s, readTimeout: .inf, connectTimeout: 1e999}}]\n",
    );
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.yml");
    for at in ["9:", "10:"] {
        assert!(err.contains(&format!("{file}:{at}")), "{at}: {err}");
    }
    assert!(err.contains("NaN") && err.contains("Infinity"), "{err}");
}

/// A rate-limit window as long as EG's (its count kept in Redis with an expiry: a 30-day quota
/// works), up to the largest whole number JavaScript holds; a larger one is an error (it
/// wrapped to a negative expiry in Redis, which deleted every count: nothing was limited).
#[test]
fn rate_limit_windows_are_as_long_as_egs() {
    let yaml = |w: u64| {
        format!("http: {{port: 8080}}\napiEndpoints: {{a: {{}}}}\npolicies: [rate-limit, terminate]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - rate-limit: [{{action: {{max: 2, windowMs: {w}}}}}]\n      - terminate: [{{action: {{statusCode: 200}}}}]\n")
    };
    let dir = ConfigDir::new(&yaml(9_223_372_036_854_775_807));
    let err = check_errors(&dir);
    assert!(
        err.contains(&format!("{}:8:", dir.file("gateway.config.yml")))
            && err.contains("`windowMs` must be from 1 to 9007199254740991"),
        "{err}"
    );
    for fine in [2_592_000_000, 9_007_199_254_740_991] {
        dir.write("gateway.config.yml", &yaml(fine));
        let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
        assert_eq!(out.status.code(), Some(0), "{fine}: {}", stderr(&out));
    }
}

/// The storage route is looked for before the Admin API's own routes: an `endpointName` that
/// would take one of them (or the metrics path, or every path) is an error at its position.
#[test]
fn a_storage_route_that_would_hide_admin_routes_is_an_error() {
    let dir = ConfigDir::new("http: {port: 8080}\napiEndpoints: {}\n");
    let file = dir.file("system.config.yml");
    let system = |name: &str| {
        format!("plugins:\n  metrics: {{endpointName: /m/x}}\n  storage:\n    endpointName: '{name}'\n    providers: {{aws: {{accessKeyId: a, secretAccessKey: b}}}}\n")
    };
    for (name, hidden) in [
        ("/users", "`/users`"),
        ("tollgate/x", "`/tollgate`"),
        ("/", "every route"),
        ("/m", "`/m/x`"),
    ] {
        dir.write("system.config.yml", &system(name));
        let err = check_errors(&dir);
        assert!(
            err.contains(&format!("{file}:4:19:"))
                && err.contains(&format!("would hide the Admin API's {hidden}")),
            "{name}: {err}"
        );
    }
    dir.write("system.config.yml", &system("/s3"));
    let out = run_tollgate(&["check", "-c", &dir.path.display().to_string()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A file whose aliases nest (800 bytes that stand for billions of values) is refused at the
/// alias that goes past the limit; it exhausted the gateway's memory, on a reload too.
#[test]
fn aliases_nested_in_aliases_are_refused() {
    let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for n in 1..=8 {
        let prev = format!("*a{}", n - 1);
        yaml.push_str(&format!("a{n}: &a{n} [{}]\n", vec![prev; 10].join(", ")));
    }
    yaml.push_str("http: {port: 28691}\napiEndpoints: {a: {paths: '/a/*'}}\n");
    let dir = ConfigDir::new(&yaml);
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.yml");
    assert!(
        err.contains(&format!("{file}:5:")) && err.contains("aliases stand for more than"),
        "{err}"
    );
}

/// An empty file (a save caught between its truncation and its write) is no config: EG
/// refuses it too. A byte-order mark and bytes that are not UTF-8 (in a comment) are read as
/// EG reads them, and `!!str` keeps a value a string.
#[test]
fn empty_files_are_refused_and_marked_ones_read_as_eg_reads_them() {
    let dir = ConfigDir::new("# nothing but a comment\n");
    let err = check_errors(&dir);
    assert!(err.contains("the gateway config is empty"), "{err}");
    let dir = ConfigDir::new("http: {port: 28692}\napiEndpoints: {a: {paths: '/a/*'}}\n");
    dir.write("system.config.yml", "");
    let err = check_errors(&dir);
    assert!(err.contains("the system config is empty"), "{err}");

    let mut bytes = b"\xEF\xBB\xBF# caf\xE9 (Latin-1)\n".to_vec();
    bytes.extend_from_slice(
        b"http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints:\n  a: {paths: '/a/*'}\npolicies: [terminate]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - terminate: [{action: {statusCode: 203, message: !!str 0123}}]\n",
    );
    let dir = ConfigDir::new("");
    std::fs::write(dir.path.join("gateway.config.yml"), bytes).expect("write");
    let gw = GatewayProcess::start(&dir);
    let r = get(gw.port, "GET", "/a/x", &[]);
    assert_eq!((r.status, r.text().as_str()), (203, "0123"));
}

/// A listener whose port is empty (an unset variable) leaves the gateway nowhere to listen:
/// `check` and a reload say so where the file does (`serve` refused it with no position, after
/// `check` had passed it).
#[test]
fn a_listener_without_a_port_is_an_error() {
    let dir = ConfigDir::new(
        "http:\n  port: ${TOLLGATE_TEST_UNSET_PORT}\napiEndpoints: {a: {paths: '/a/*'}}\n",
    );
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.yml");
    assert!(
        err.contains(&format!("{file}:2:9: no port (an unset variable?)")),
        "{err}"
    );
}

/// Pipelines as EG's schema allows them: a list (named by place); one policy per list item —
/// two keys in one item (`- cors:` then `proxy:` at its indent) are an error where the second
/// is (both ran); `crypto.saltRounds` given as a string of digits is read as its number.
#[test]
fn pipelines_listed_one_policy_per_item_and_numbers_in_strings() {
    let dir = ConfigDir::new(
        "http: {port: 28697}\napiEndpoints: {a: {paths: '/a/*'}}\npolicies: [cors, terminate]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - cors:\n        terminate:\n",
    );
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.yml");
    assert!(
        err.contains(&format!(
            "{file}:9:9: pipeline `p`: one policy per list item"
        )),
        "{err}"
    );
    // A step's `action` at the indent of its policy, not under it: said as that, once (it was
    // also a policy `action` not declared, and `serviceEndpoint` no part of a step).
    let dir = ConfigDir::new(
        "http: {port: 28697}\napiEndpoints: {a: {paths: '/a/*'}}\nserviceEndpoints: {b: {url: 'http://127.0.0.1:1'}}\npolicies: [proxy]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - proxy:\n        action:\n          serviceEndpoint: b\n",
    );
    let err = check_errors(&dir);
    let file = dir.file("gateway.config.yml");
    assert!(
        err.contains(&format!(
            "{file}:10:9: pipeline `p`: `action` is at the indent of `proxy`, not under it"
        )) && !err.contains("not declared")
            && !err.contains("no part of a policy step"),
        "{err}"
    );
    let dir = ConfigDir::new(
        "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints: {a: {paths: '/a/*'}}\npolicies: [terminate]\npipelines:\n  - apiEndpoints: [a]\n    policies:\n      - terminate: [{action: {statusCode: 204}}]\n",
    );
    dir.write(
        "system.config.yml",
        "db: {redis: {emulate: true}}\ncrypto: {saltRounds: '5'}\n",
    );
    let gw = GatewayProcess::start(&dir);
    assert_eq!(get(gw.port, "GET", "/a/x", &[]).status, 204);
}
