//! The command line's tools: `tollgate healthcheck` (what the image's HEALTHCHECK runs),
//! shell completions and the man page from the CLI's definitions, and progress that shows on a
//! terminal and stays quiet when not on one.

mod support;

use std::process::Command;

use support::gateway::{binary, run_tollgate};
use support::{ConfigDir, EchoUpstream, GatewayProcess};

fn config(up: &EchoUpstream) -> String {
    format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  a: {{paths: '/a/*'}}\nserviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [proxy]\npipelines:\n  a: {{apiEndpoints: [a], policies: [{{proxy: {{action: {{serviceEndpoint: up}}}}}}]}}\n",
        up.url("")
    )
}

#[test]
fn healthcheck_says_whether_the_gateway_answers() {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up));
    dir.write(
        "system.config.yml",
        "db:\n  redis:\n    emulate: true\nplugins:\n  healthcheck:\n    endpointName: /alive\n",
    );
    let gw = GatewayProcess::start(&dir);
    let port = gw.port.to_string();
    let d = dir.path.display().to_string();
    let check = |extra: &[&str]| {
        let mut args = vec!["healthcheck", "--config", d.as_str()];
        args.extend_from_slice(extra);
        run_tollgate(&args, &[("PORT", port.as_str()), ("ADMIN_PORT", "1")])
    };
    let out = check(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check(&["--ready"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_tollgate(
        &[
            "healthcheck",
            "--url",
            &format!("http://127.0.0.1:{port}/alive"),
        ],
        &[],
    );
    assert!(out.status.success());
    // A gateway that does not answer (stopped): `--timeout` bounds the wait.
    gw.signal("STOP");
    let out = check(&["--timeout", "1"]);
    gw.signal("CONT");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no answer within 1s (--timeout)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(gw);
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{port}/alive")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CLI asks the gateway that runs, not the config on disk: while the config is being
/// edited and does not load (the gateway keeps the one it runs), `healthcheck` says it is
/// healthy and `reload` reaches it and shows why the new config fails; with no gateway
/// running, a command that needs the Admin API says the config does not load, instead of
/// trying EG's default port. An https-only gateway is checked over TLS.
#[test]
fn the_cli_asks_the_running_gateway_while_its_config_is_broken() {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up));
    let gw = GatewayProcess::start(&dir);
    let d = dir.path.display().to_string();
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // No PORT in the environment: what the config says of its port cannot be read either.
    let healthy = run_tollgate(&["healthcheck", "--config", &d], &[]);
    assert!(healthy.status.success(), "{}", text(&healthy));
    let good = std::fs::read_to_string(dir.path.join("gateway.config.yml")).expect("config");
    // A config that loads with a warning: said once, by the gateway's answer (the CLI's own
    // reading of the config said it a second time).
    dir.write("gateway.config.yml", &format!("{good}\nextra: 1\n"));
    let reload = run_tollgate(&["reload", "--config", &d], &[]);
    let said = text(&reload);
    assert!(reload.status.success(), "{said}");
    assert_eq!(said.matches("`extra` is no section").count(), 1, "{said}");
    dir.write("gateway.config.yml", &format!("{good}\n  bad: [\n"));
    let healthy = run_tollgate(&["healthcheck", "--config", &d], &[]);
    assert!(
        healthy.status.success(),
        "a broken config on disk made the running gateway look dead: {}",
        text(&healthy)
    );
    let reload = run_tollgate(&["reload", "--config", &d], &[]);
    let said = text(&reload);
    assert_eq!(reload.status.code(), Some(1), "{said}");
    assert!(
        said.contains("gateway.config.yml:") && said.contains("running config stays"),
        "the reload's errors were not shown: {said}"
    );
    drop(gw);
    let users = run_tollgate(&["users", "list", "--config", &d], &[]);
    let said = text(&users);
    assert_eq!(users.status.code(), Some(1), "{said}");
    assert!(
        said.contains("does not load") && !said.contains("9876"),
        "{said}"
    );
    // https only: checked over TLS, whatever the certificate names.
    let (tls_dir, _tls) = support::tls::https_gateway(&format!(
        "apiEndpoints:\n  a: {{paths: '/a/*'}}\nserviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [proxy]\npipelines:\n  a: {{apiEndpoints: [a], policies: [{{proxy: {{action: {{serviceEndpoint: up}}}}}}]}}\n",
        up.url("")
    ));
    let t = tls_dir.path.display().to_string();
    let healthy = run_tollgate(&["healthcheck", "--config", &t], &[]);
    assert!(healthy.status.success(), "https only: {}", text(&healthy));
}

/// A gateway running on the config directory is asked before the system config's `cli.url`:
/// the shipped `conf/` names the Admin API's port by `${TOLLGATE_ADMIN_PORT:-9876}`, and a
/// shell without that variable (a service's `Environment=` sets it for the gateway only) sent
/// every consumer command and `reload` to a port nothing listens on.
#[test]
fn a_running_gateway_is_asked_before_the_cli_url_of_its_config() {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up));
    let nothing = support::free_port();
    dir.write(
        "system.config.yml",
        &format!("db:\n  redis:\n    emulate: true\ncli:\n  url: 'http://127.0.0.1:${{CLI_PORT:-{nothing}}}'\n"),
    );
    let gw = GatewayProcess::start(&dir);
    let d = dir.path.display().to_string();
    for args in [&["users", "list"][..], &["reload"]] {
        let mut all = args.to_vec();
        all.extend(["--config", d.as_str()]);
        // (A variable set to nothing is none, as EG reads it: it was taken for an admin URL
        // that is no URL.)
        let out = run_tollgate(&all, &[("EG_ADMIN_URL", "")]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(gw);
    // With none running, `cli.url` is where the CLI goes.
    let out = run_tollgate(&["users", "list", "--config", &d], &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("127.0.0.1:{nothing}")), "{said}");
}

#[test]
fn completions_and_the_man_page() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef tollgate"),
        ("fish", "complete -c tollgate"),
    ] {
        let out = run_tollgate(&["completions", shell], &[]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text:.200}");
        for sub in ["serve", "populate", "reload", "healthcheck"] {
            assert!(text.contains(sub), "{shell} completes `{sub}`");
        }
    }
    let out = run_tollgate(&["man"], &[]);
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(
        man.starts_with(".ie") || man.contains(".TH tollgate"),
        "{man:.300}"
    );
    assert!(
        man.contains("populate") && man.contains("reload"),
        "{man:.300}"
    );
    // Every command's options are on the one page; no other page is referred to.
    assert!(
        man.contains(".SH \"TOLLGATE SERVE\"") && man.contains("cache\\-memory"),
        "{man:.300}"
    );
    assert!(!man.contains("tollgate\\-serve(1)"), "{man:.300}");
    // Output into a pipe whose reader stops after a line (`| head -1`): the command ends
    // quietly, without a panic.
    for args in [&["man"][..], &["completions", "bash"]] {
        let mut child = Command::new(binary())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start");
        {
            use std::io::Read;
            let mut first = [0u8; 16];
            let mut stdout = child.stdout.take().expect("stdout");
            stdout.read_exact(&mut first).expect("the output begins");
        }
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn progress_shows_on_a_terminal_only() {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up));
    let gw = GatewayProcess::start(&dir);
    // A consumers file big enough to take a moment.
    let users: Vec<String> = (0..400)
        .map(|i| format!(r#""user{i}": {{"app{i}": {{"type": "key-auth", "keyId": "k{i}", "keySecret": "s{i}", "scopes": ["a"]}}}}"#))
        .collect();
    dir.write(
        "big.json",
        &format!(r#"{{"scopes": ["a"], "users": {{{}}}}}"#, users.join(", ")),
    );
    let admin = format!("http://127.0.0.1:{}", gw.admin_port);
    let file = dir.file("big.json");
    // Not on a terminal: the result line only.
    let out = run_tollgate(&["populate", &file, "--admin-url", &admin], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let quiet = String::from_utf8_lossy(&out.stderr);
    assert!(!quiet.contains("populating"), "{quiet}");
    assert_eq!(quiet.lines().count(), 1, "{quiet}");
    // On a terminal (script(1) gives it one): the progress shows.
    let cmd = format!("{} clean {file} --admin-url {admin}", binary());
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script (util-linux)");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("cleaning 400 user(s)"), "{shown}");
    assert!(shown.contains("✔"), "{shown}");
}

/// An admin URL that answers with a web page (the gateway's port, a web server): the failure
/// is one line naming the status, not the page.
#[test]
fn an_admin_url_answering_a_web_page_is_said_in_one_line() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
        let page = format!(
            "<!DOCTYPE html>\n<html>\n{}</html>\n",
            "<p>Not here</p>\n".repeat(50)
        );
        let _ = write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        );
    });
    let out = run_tollgate(&["users", "list", "--admin-url", &url], &[]);
    server.join().expect("server");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("404 Not Found with a page of markup") && !said.contains("<p>"),
        "{said}"
    );
    assert_eq!(said.trim().lines().count(), 1, "{said}");
}
