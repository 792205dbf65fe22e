//! The consumer routes of the Admin API (EG's paths, shapes and status codes), its optional
//! bearer token, and the CLI on top of it.

mod support;

use support::gateway::run_tollgate;
use support::{get, json_body, send_json, ConfigDir, GatewayProcess};

fn call(port: u16, method: &str, path: &str, body: &str) -> support::Response {
    send_json(port, method, path, body)
}

fn json(r: &support::Response) -> serde_json::Value {
    json_body(r)
}

fn gateway(extra_args: &[&str]) -> (ConfigDir, GatewayProcess) {
    let dir = ConfigDir::new(
        "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints: {}\n",
    );
    let data = dir.path.join("data").display().to_string();
    let mut args = vec!["--data-dir", data.as_str()];
    args.extend_from_slice(extra_args);
    let gw = GatewayProcess::start_with(&dir, &args, &[]);
    (dir, gw)
}

#[test]
fn users_apps_scopes_and_credentials_routes() {
    let (_d, gw) = gateway(&[]);
    let a = gw.admin_port;
    assert_eq!(
        json(&get(a, "GET", "/scopes", &[])),
        serde_json::json!({"scopes": null})
    );
    assert_eq!(
        call(a, "POST", "/scopes", r#"{"scopes": ["wms", "k2"]}"#).status,
        201
    );
    assert_eq!(
        call(a, "POST", "/scopes", r#"{"scopes": ["wms"]}"#).text(),
        "One or more scopes already exist."
    );
    assert_eq!(call(a, "PUT", "/scopes/wmts", "").status, 201);
    assert_eq!(
        json(&get(a, "GET", "/scopes/wmts", &[])),
        serde_json::json!({"scope": "wmts"})
    );
    let missing = get(a, "GET", "/scopes/nope", &[]);
    assert_eq!(
        (missing.status, missing.text().as_str()),
        (404, "scope not found: nope")
    );

    for name in ["u1", "u2", "u3"] {
        assert_eq!(
            call(a, "POST", "/users", &format!(r#"{{"username": "{name}"}}"#)).status,
            200
        );
    }
    // An id given that is another user's: refused, that user left as it was.
    let u1 = json(&get(a, "GET", "/users/u1", &[]));
    let taken = call(
        a,
        "POST",
        "/users",
        &format!(
            r#"{{"username": "x", "id": "{}"}}"#,
            u1["id"].as_str().unwrap_or("")
        ),
    );
    assert_eq!(
        (taken.status, taken.text().as_str()),
        (409, "user id already exists")
    );
    assert_eq!(json(&get(a, "GET", "/users/u1", &[])), u1);
    // A keyId that is a consumer's id would take the name of that consumer's own key ids
    // (its credentials written later failed half-way, leaving a live key no one owned).
    let u1_id = u1["id"].as_str().unwrap_or("");
    let clash = call(
        a,
        "POST",
        "/credentials",
        &format!(
            r#"{{"consumerId": "u2", "type": "key-auth", "credential": {{"keyId": "{u1_id}", "keySecret": "s"}}}}"#
        ),
    );
    assert_eq!(clash.status, 409, "{}", clash.text());
    assert!(
        clash.text().contains("is a consumer's id"),
        "{}",
        clash.text()
    );
    let invalid = call(a, "POST", "/users", r#"{"firstname": "x"}"#);
    assert_eq!(
        (invalid.status, invalid.text().as_str()),
        (422, "data should have required property 'username'")
    );
    let page = json(&get(a, "GET", "/users?count=2", &[]));
    assert_eq!(page["users"].as_array().map(Vec::len), Some(2));
    let next = page["nextKey"].as_u64().expect("nextKey");
    assert!(next > 0);
    let rest = json(&get(a, "GET", &format!("/users?start={next}&count=2"), &[]));
    assert_eq!(
        (
            rest["users"].as_array().map(Vec::len),
            rest["nextKey"].as_u64()
        ),
        (Some(1), Some(0))
    );
    let updated = json(&call(
        a,
        "PUT",
        "/users/u1",
        r#"{"email": "u1@example.com"}"#,
    ));
    assert_eq!(updated["email"], "u1@example.com");
    assert_eq!(
        call(a, "PUT", "/users/u1", r#"{"nonsense": 1}"#).status,
        422
    );
    assert_eq!(
        json(&call(a, "PUT", "/users/u1/status", r#"{"status": false}"#)),
        serde_json::json!({"status": "Deactivated"})
    );
    assert_eq!(
        json(&call(a, "PUT", "/users/u1/status", r#"{"status": false}"#)),
        serde_json::json!({"status": "Inactive"})
    );
    let nobody = call(a, "PUT", "/users/nobody/status", r#"{"status": true}"#);
    assert_eq!(
        (nobody.status, nobody.text().as_str()),
        (404, "user not found: nobody")
    );
    assert_eq!(
        get(a, "GET", "/users/nobody", &[]).text(),
        "User not found: nobody"
    );

    let app = json(&call(
        a,
        "POST",
        "/apps",
        r#"{"userId": "u2", "name": "viewer", "scopes": ["wms"]}"#,
    ));
    assert_eq!(
        app["scopes"],
        serde_json::json!(["wms"]),
        "the create answer shows what was sent"
    );
    assert_eq!(
        json(&get(a, "GET", "/apps/viewer", &[]))["scopes"],
        "wms",
        "stored comma-joined"
    );
    assert_eq!(
        call(a, "POST", "/apps", r#"{"userId": "ghost", "name": "x"}"#).text(),
        "The specified user does not exist"
    );
    assert_eq!(
        call(a, "POST", "/apps", r#"{"userId": "u2", "name": "viewer"}"#).status,
        409
    );
    assert_eq!(
        call(
            a,
            "POST",
            "/apps",
            r#"{"userId": "u2", "name": "y", "id": "mine"}"#
        )
        .status,
        422,
        "apps take only their model's properties"
    );

    let ka = json(&call(
        a,
        "POST",
        "/credentials",
        r#"{"consumerId": "viewer", "type": "key-auth", "credential": {"scopes": ["wms"]}}"#,
    ));
    let key_id = ka["keyId"].as_str().expect("keyId").to_string();
    // A keyId that is a consumer's id names that consumer's set of key ids: refused, the set
    // (and the credential in it) kept.
    let viewer = json(&get(a, "GET", "/apps/viewer", &[]));
    let viewer_id = viewer["id"].as_str().expect("id");
    let clash = call(
        a,
        "POST",
        "/credentials",
        &format!(
            r#"{{"consumerId": "viewer", "type": "key-auth", "credential": {{"keyId": "{viewer_id}"}}}}"#
        ),
    );
    assert_eq!(clash.status, 409, "{}", clash.text());
    let listed = json(&get(
        a,
        "GET",
        &format!("/credentials/key-auth/{key_id}"),
        &[],
    ));
    assert_eq!(listed["keyId"].as_str(), Some(key_id.as_str()), "{listed}");
    assert_eq!(
        call(
            a,
            "POST",
            "/credentials",
            r#"{"consumerId": "viewer", "type": "key-auth", "credential": {"scopes": ["nope"]}}"#
        )
        .text(),
        "One or more scopes don't exist"
    );
    assert_eq!(
        call(
            a,
            "POST",
            "/credentials",
            r#"{"consumerId": "ghost", "type": "jwt"}"#
        )
        .text(),
        "No consumer found with id: ghost"
    );
    // What is missing is named (EG's words first).
    for (path, body, said) in [
        (
            "/credentials",
            r#"{"type": "key-auth"}"#,
            "consumerId is required",
        ),
        (
            "/credentials",
            r#"{"consumerId": "viewer"}"#,
            "type is required",
        ),
        ("/apps", r#"{"name": "z"}"#, "userId is required"),
    ] {
        let r = call(a, "POST", path, body);
        assert_eq!(r.status, 422, "{body}");
        assert!(r.text().contains(said), "{body}: {}", r.text());
    }
    let generated = json(&call(
        a,
        "POST",
        "/credentials",
        r#"{"consumerId": "u3", "type": "basic-auth"}"#,
    ));
    assert_eq!(
        generated["password"].as_str().map(str::len),
        Some(36),
        "a generated password is shown once"
    );
    assert_eq!(
        call(
            a,
            "POST",
            "/credentials",
            r#"{"consumerId": "u3", "type": "basic-auth"}"#
        )
        .text(),
        "Credential already exists and is active"
    );
    assert_eq!(
        call(
            a,
            "PUT",
            &format!("/credentials/key-auth/{key_id}/scopes/k2"),
            ""
        )
        .status,
        204
    );
    assert_eq!(
        json(&get(
            a,
            "GET",
            &format!("/credentials/key-auth/{key_id}"),
            &[]
        ))["scopes"],
        serde_json::json!(["wms", "k2"])
    );
    assert_eq!(
        call(
            a,
            "DELETE",
            &format!("/credentials/key-auth/{key_id}/scopes/wms"),
            ""
        )
        .status,
        204
    );
    assert_eq!(
        call(
            a,
            "PUT",
            &format!("/credentials/key-auth/{key_id}/scopes/"),
            r#"{"scopes": ["wmts"]}"#
        )
        .status,
        204
    );
    assert_eq!(
        json(&get(
            a,
            "GET",
            &format!("/credentials/key-auth/{key_id}"),
            &[]
        ))["scopes"],
        serde_json::json!(["wmts"])
    );
    assert_eq!(
        json(&call(
            a,
            "PUT",
            &format!("/credentials/key-auth/{key_id}/status"),
            r#"{"status": false}"#
        )),
        serde_json::json!({"status": "Deactivated"})
    );
    assert_eq!(
        get(a, "GET", "/credentials/key-auth/nope", &[]).text(),
        "null"
    );
    let by_consumer = json(&get(a, "GET", "/credentials/viewer", &[]));
    assert_eq!(by_consumer["credentials"][0]["keyId"], key_id.as_str());
    let unknown = get(a, "GET", "/credentials/ghost", &[]);
    assert_eq!((unknown.status, unknown.text().as_str()), (404, "{}"));
    assert_eq!(
        json(&get(a, "GET", "/credentials", &[]))["credentials"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // Deleting a scope takes it from the credentials that hold it.
    assert_eq!(call(a, "DELETE", "/scopes/wmts", "").status, 204);
    assert_eq!(
        json(&get(
            a,
            "GET",
            &format!("/credentials/key-auth/{key_id}"),
            &[]
        ))["scopes"],
        serde_json::json!([])
    );
    assert_eq!(
        call(a, "DELETE", &format!("/credentials/key-auth/{key_id}"), "").status,
        204
    );
    assert_eq!(call(a, "DELETE", "/apps/viewer", "").status, 204);
    assert_eq!(call(a, "DELETE", "/apps/viewer", "").status, 404);
    assert_eq!(call(a, "POST", "/users", "{not json").status, 400);
}

/// A basic-auth credential made in place of a switched-off one is written over it, as EG
/// writes it: what it does not set, its scopes among them, it keeps (a password rotated that
/// way lost the consumer's scopes).
#[test]
fn a_password_credential_made_anew_keeps_what_it_does_not_set() {
    let (_d, gw) = gateway(&[]);
    let a = gw.admin_port;
    assert!(call(a, "POST", "/scopes", r#"{"scopes": ["s1"]}"#).status < 300);
    let user = json(&call(a, "POST", "/users", r#"{"username": "rot"}"#));
    let id = user["id"].as_str().expect("id").to_string();
    let first = call(
        a,
        "POST",
        "/credentials",
        r#"{"consumerId": "rot", "type": "basic-auth", "credential": {"password": "pw1", "scopes": ["s1"]}}"#,
    );
    assert!(first.status < 300, "{}", first.text());
    let off = call(
        a,
        "PUT",
        &format!("/credentials/basic-auth/{id}/status"),
        r#"{"status": false}"#,
    );
    assert_eq!(off.text(), r#"{"status":"Deactivated"}"#);
    let again = call(
        a,
        "POST",
        "/credentials",
        r#"{"consumerId": "rot", "type": "basic-auth", "credential": {"password": "pw2"}}"#,
    );
    assert!(again.status < 300, "{}", again.text());
    let read = json(&get(
        a,
        "GET",
        &format!("/credentials/basic-auth/{id}"),
        &[],
    ));
    assert_eq!(read["scopes"], serde_json::json!(["s1"]), "{read}");
    assert_eq!(read["isActive"], true, "{read}");
}

/// The token guards every route but the metrics' (read by Prometheus and by Kargo's gateway
/// route to them, which forwards no token: they answered 401 with a token set).
#[test]
fn an_admin_token_guards_every_route_but_the_metrics() {
    let (_d, gw) = gateway(&["--admin-token", "s3cr3t"]);
    assert_eq!(get(gw.admin_port, "GET", "/users", &[]).status, 401);
    assert_eq!(
        get(
            gw.admin_port,
            "GET",
            "/users",
            &[("Authorization", "Bearer wrong")]
        )
        .status,
        401
    );
    assert_eq!(
        get(
            gw.admin_port,
            "GET",
            "/users",
            &[("Authorization", "Bearer s3cr3t")]
        )
        .status,
        200
    );
    let m = get(gw.admin_port, "GET", "/metrics", &[]);
    assert_eq!(m.status, 200);
    assert!(m.text().contains("tollgate_"), "{}", m.text());
    assert_eq!(
        support::request(
            gw.admin_port,
            "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            false
        )
        .status,
        401
    );
    assert_eq!(get(gw.admin_port, "GET", "/metrics/x", &[]).status, 401);
    // Without the token, not to a page whose name was pointed at this loopback listener.
    let rebound = format!("rebind.example:{}", gw.admin_port);
    let r = get(
        gw.admin_port,
        "GET",
        "/metrics",
        &[("Host", rebound.as_str())],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = get(
        gw.admin_port,
        "GET",
        "/metrics",
        &[
            ("Host", rebound.as_str()),
            ("Authorization", "Bearer s3cr3t"),
        ],
    );
    assert_eq!(r.status, 200);
}

/// A web page may not drive the Admin API: a simple cross-site POST (text/plain, no
/// preflight) and a page whose name was pointed at loopback (DNS rebinding) are refused; an
/// operator's tool (no Origin, Host an address or localhost) is not.
#[test]
fn pages_of_other_sites_cannot_drive_the_admin_api() {
    let (dir, gw) = gateway(&[]);
    let body = r#"{"username":"evil"}"#;
    let post = |headers: &str| {
        support::request(
            gw.admin_port,
            &format!(
                "POST /users HTTP/1.1\r\n{headers}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
            false,
        )
    };
    let cross = post("Host: 127.0.0.1\r\nOrigin: http://evil.example\r\n");
    assert_eq!(cross.status, 403, "{}", cross.text());
    let rebound = post("Host: evil.example:9876\r\nOrigin: http://evil.example:9876\r\n");
    assert_eq!(rebound.status, 403, "{}", rebound.text());
    // A Host that is not ASCII names no address either (it read as none, and passed).
    let odd = post("Host: \u{e9}vil.example\r\n");
    assert_eq!(odd.status, 403, "{}", odd.text());
    assert_eq!(get(gw.admin_port, "GET", "/users/evil", &[]).status, 404);
    // The operator's own tools.
    let own = post("Host: 127.0.0.1\r\n");
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(get(gw.admin_port, "GET", "/users/evil", &[]).status, 200);
    // A config that moves the Admin API off loopback applies at the next start: reloaded, the
    // listener is where it was, and a rebound page is still refused (the check read the
    // reloaded config's host, and let it through).
    dir.write(
        "gateway.config.yml",
        "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 0.0.0.0}\napiEndpoints: {}\n",
    );
    let r = support::send_json(gw.admin_port, "POST", "/tollgate/reload", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let rebound = post("Host: evil.example:9876\r\nOrigin: http://evil.example:9876\r\n");
    assert_eq!(rebound.status, 403, "{}", rebound.text());
}

#[test]
fn the_cli_speaks_to_the_admin_api() {
    let (dir, gw) = gateway(&[]);
    let url = format!("http://127.0.0.1:{}", gw.admin_port);
    let env = [("EG_ADMIN_URL", url.as_str())];
    let cli = |args: &[&str]| {
        let out = run_tollgate(args, &env);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = cli(&["users", "list"]);
    assert_eq!((code, out.as_str()), (Some(0), "You have no users\n"));
    let (code, id, err) = cli(&["users", "create", "-q", "-p", "username=kalisio"]);
    assert_eq!(code, Some(0), "{err}");
    let id = id.trim().to_string();
    assert_eq!(id.len(), 36);
    let (_, out, _) = cli(&["users", "list"]);
    let user: serde_json::Value = serde_json::from_str(&out).expect("one user as JSON");
    assert_eq!(user["username"], "kalisio");
    assert!(
        out.starts_with("{\n  \"isActive\": true,\n  \"username\": \"kalisio\""),
        "{out}"
    );
    let (code, _, err) = cli(&["scopes", "create", "wms", "wmts"]);
    assert_eq!((code, err.as_str()), (Some(0), "✔ Created wms,wmts\n"));
    // Several names: one that fails is said, and the others are still done (as EG's CLI).
    for name in ["cli1", "cli2"] {
        let (code, _, err) = cli(&["users", "create", "-q", "-p", &format!("username={name}")]);
        assert_eq!(code, Some(0), "{err}");
    }
    let (code, _, err) = cli(&["users", "deactivate", "cli1", "nobody", "cli2"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("✔ Deactivated cli1")
            && err.contains("✔ Deactivated cli2")
            && err.contains("✖ 1 of 3 failed"),
        "{err}"
    );
    for name in ["cli1", "cli2"] {
        let (_, out, _) = cli(&["users", "info", name]);
        let user: serde_json::Value = serde_json::from_str(&out).expect("a user as JSON");
        assert_eq!(user["isActive"], false, "{name}: {out}");
    }
    // `-q`: what was done, by name, one a line, as EG's CLI prints it (a script reads it).
    let (code, out, err) = cli(&["users", "activate", "-q", "cli1", "cli2"]);
    assert_eq!((code, out.as_str()), (Some(0), "cli1\ncli2\n"), "{err}");
    let (code, out, err) = cli(&["scopes", "create", "-q", "tms"]);
    assert_eq!((code, out.as_str()), (Some(0), "tms\n"), "{err}");
    let (code, out, _) = cli(&["scopes", "info", "tms"]);
    assert_eq!((code, out.as_str()), (Some(0), "tms\n"));
    let (code, out, err) = cli(&["scopes", "remove", "-q", "tms"]);
    assert_eq!((code, out.as_str()), (Some(0), "tms\n"), "{err}");
    let (code, out, err) = cli(&["users", "remove", "-q", "cli1", "cli2"]);
    assert_eq!((code, out.as_str()), (Some(0), "cli1\ncli2\n"), "{err}");
    let (_, app_id, _) = cli(&[
        "apps",
        "create",
        "-u",
        "kalisio",
        "-q",
        "-p",
        "name=kano",
        "-p",
        "scopes=[\"wms\"]",
    ]);
    // A key-auth credential of kano's, with `-p` for its scopes: `keyId:keySecret`.
    let create_key = |scopes: &str| {
        cli(&[
            "credentials",
            "create",
            "-c",
            "kano",
            "-t",
            "key-auth",
            "-q",
            "-p",
            scopes,
        ])
    };
    let (code, key, err) = create_key("scopes=[\"wms\"]");
    assert_eq!(code, Some(0), "{err}");
    let (key_id, secret) = key.trim().split_once(':').expect("keyId:keySecret");
    assert_eq!((key_id.len(), secret.len()), (22, 22));
    let (_, listed, _) = cli(&["credentials", "list", "-c", app_id.trim(), "-q"]);
    assert_eq!(listed.trim(), key_id);
    // `info -q`: the id alone, never the secret (as EG's).
    let (code, shown, _) = cli(&["credentials", "info", key_id, "-t", "key-auth", "-q"]);
    assert_eq!((code, shown.trim()), (Some(0), key_id));
    // One scope given as a value is a list of one (as EG's CLI makes it).
    let (code, one, err) = create_key("scopes=wms");
    assert_eq!(code, Some(0), "{err}");
    let one_id = one
        .trim()
        .split_once(':')
        .expect("keyId:keySecret")
        .0
        .to_string();
    let (_, info, _) = cli(&["credentials", "info", &one_id, "-t", "key-auth"]);
    let info: serde_json::Value = serde_json::from_str(&info).expect("JSON");
    assert_eq!(info["scopes"], serde_json::json!(["wms"]), "{info}");
    // `--stdin`: a credential per line, its consumer and type in it (as EG's).
    let out = support::gateway::run_tollgate_with_input(
        &["credentials", "create", "--stdin", "-q"],
        &env,
        "{\"consumer\": \"kano\", \"type\": \"key-auth\", \"scopes\": [\"wms\"]}\n{\"consumer\": \"kano\", \"type\": \"jwt\"}\n",
    );
    let made = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(made.lines().count(), 2, "{made}");
    let first = made
        .lines()
        .next()
        .and_then(|l| l.split_once(':'))
        .expect("keyId:keySecret")
        .0;
    let (_, info, _) = cli(&["credentials", "info", first, "-t", "key-auth"]);
    let info: serde_json::Value = serde_json::from_str(&info).expect("JSON");
    assert_eq!(info["scopes"], serde_json::json!(["wms"]), "{info}");
    assert!(
        info.get("consumer").is_none() && info.get("type") == Some(&serde_json::json!("key-auth")),
        "{info}"
    );
    // A line that fails is said, and the lines after it are still made (as EG's); the
    // command fails, saying how many did.
    let out = support::gateway::run_tollgate_with_input(
        &["credentials", "create", "--stdin", "-q"],
        &env,
        "{\"consumer\": \"nobody-here\", \"type\": \"key-auth\"}\n\nnot json\n{\"consumer\": \"kano\", \"type\": \"key-auth\"}\n",
    );
    let (made, said) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert_eq!(
        made.lines().count(),
        1,
        "the last line was made: {made} {said}"
    );
    // (Numbered as the input's lines, the blank one too; the Admin API's refusals as well.)
    assert!(
        said.contains("line 3 of standard input is not JSON"),
        "{said}"
    );
    assert!(
        said.contains("line 1 of standard input: No consumer found"),
        "{said}"
    );
    assert!(said.contains("2 of 3 failed"), "{said}");
    // An unknown filter and `scopes set` without scopes are refused, not taken for others.
    let (code, _, _) = cli(&["credentials", "list", "-c", app_id.trim(), "-f", "archivd"]);
    assert_eq!(code, Some(2));
    let (code, _, _) = cli(&["credentials", "scopes", "set", key_id, "-t", "key-auth"]);
    assert_eq!(code, Some(2));
    let (code, _, err) = cli(&["credentials", "deactivate", key_id, "-t", "key-auth"]);
    assert_eq!(
        (code, err.trim()),
        (Some(0), format!("✔ Deactivated {key_id}").as_str())
    );
    let (code, out, err) = cli(&["credentials", "activate", key_id, "-t", "key-auth", "-q"]);
    assert_eq!((code, out.trim()), (Some(0), key_id), "{err}");
    let (code, _, err) = cli(&["users", "info", "nobody"]);
    assert_eq!((code, err.trim()), (Some(1), "✖ User not found: nobody"));
    let (code, _, err) = cli(&["users", "remove", "kalisio"]);
    assert_eq!((code, err.trim()), (Some(0), "✔ Removed kalisio"));
    drop(gw);
    // The gateway is gone: a clear error and a failing exit status.
    let (code, _, err) = cli(&["users", "list"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot reach the Admin API") && err.contains("is `tollgate serve` running?"),
        "{err}"
    );
    drop(dir);
}

/// An apps model that leaves `name` out of `required`: an app asked for without one is a
/// `422` that says so (it was a panic, and the connection dropped unanswered).
#[test]
fn an_app_without_a_name_under_a_model_that_does_not_require_one_is_refused() {
    let dir = ConfigDir::new(
        "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints: {}\n",
    );
    std::fs::create_dir_all(dir.path.join("models")).expect("models");
    dir.write(
        "models/applications.json",
        r#"{"type": "object", "properties": {"name": {"type": "string"}, "redirectUri": {"type": "string"}}, "required": []}"#,
    );
    let data = dir.path.join("data").display().to_string();
    let gw = GatewayProcess::start_with(&dir, &["--data-dir", &data], &[]);
    let a = gw.admin_port;
    assert_eq!(
        call(a, "POST", "/users", r#"{"username": "ann"}"#).status,
        200
    );
    let r = call(a, "POST", "/apps", r#"{"userId": "ann"}"#);
    assert_eq!(
        (r.status, r.text().contains("name")),
        (422, true),
        "{}",
        r.text()
    );
    let r = call(a, "POST", "/apps", r#"{"userId": "ann", "name": "kano"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// `populate --data-dir` while a gateway runs works through it only if the directory is its
/// store's (another directory's store was left alone and the gateway's was made the file's).
#[test]
fn populate_with_another_data_dir_than_the_running_gateways_is_refused() {
    let (dir, gw) = gateway(&[]);
    dir.write(
        "consumers.config.json",
        r#"{"scopes": ["wms"], "users": {"kim": {"viewer": {"type": "key-auth", "keyId": "K1", "keySecret": "S1", "scopes": ["wms"]}}}}"#,
    );
    let config = dir.path.display().to_string();
    let own = dir.path.join("data").display().to_string();
    let other = dir.path.join("elsewhere").display().to_string();
    let admin = format!("http://127.0.0.1:{}", gw.admin_port);
    let env = [("EG_ADMIN_URL", admin.as_str())];
    let out = run_tollgate(
        &["populate", "--config", &config, "--data-dir", &other],
        &env,
    );
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("this gateway's consumers are in the embedded store in")
            && said.contains("leave --data-dir out"),
        "{said}"
    );
    assert_eq!(get(gw.admin_port, "GET", "/users/kim", &[]).status, 404);
    assert!(!dir.path.join("elsewhere").exists());
    for args in [vec!["--data-dir", own.as_str()], vec![]] {
        let mut all = vec!["populate", "--config", &config];
        all.extend(args);
        let out = run_tollgate(&all, &env);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(get(gw.admin_port, "GET", "/users/kim", &[]).status, 200);
    // A directory from `TOLLGATE_DATA_DIR` (a container sets it for the gateway and the CLI
    // alike, whatever store the gateway uses) names no store: the gateway's is worked on. A
    // file past 100 kB goes through too (the consumer routes' limit is not populate's).
    let users: Vec<String> = (0..1500)
        .map(|i| format!(r#""u{i}": {{"app{i}": {{"type": "key-auth", "keyId": "K{i}x", "keySecret": "S", "scopes": ["wms"]}}}}"#))
        .collect();
    let big = format!(
        r#"{{"scopes": ["wms"], "users": {{{}}}}}"#,
        users.join(", ")
    );
    assert!(big.len() > 100 * 1024);
    dir.write("big.json", &big);
    let file = dir.file("big.json");
    let env = [
        ("EG_ADMIN_URL", admin.as_str()),
        ("TOLLGATE_DATA_DIR", other.as_str()),
    ];
    let out = run_tollgate(&["populate", "--config", &config, &file], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(gw.admin_port, "GET", "/users/u1499", &[]).status, 200);
}

/// A listing whose answer is not one (another server, an answer cut short) is a failure, not
/// an empty list: `You have no users`, exit 0.
#[test]
fn a_listing_answer_that_is_no_listing_fails() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 15\r\n\r\n<html>hi</html>");
        }
    });
    let url = format!("http://127.0.0.1:{port}");
    for args in [["users", "list"], ["credentials", "list"]] {
        let out = run_tollgate(&args, &[("EG_ADMIN_URL", url.as_str())]);
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?}: {said}");
        assert!(said.contains("is not a listing"), "{args:?}: {said}");
    }
}

/// An object as text, its keys in order.
fn sorted(v: &serde_json::Value) -> String {
    let map: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_value(v.clone()).expect("an object");
    format!("{map:?}")
}

/// Every credential listed at once (`GET /credentials`, read for many consumers in a few round
/// trips) is each consumer's own, as its own listing has them.
#[test]
fn the_listing_of_every_credential_is_each_consumers_own() {
    let (_d, gw) = gateway(&[]);
    let a = gw.admin_port;
    let mut expected = Vec::new();
    for u in 0..6 {
        let r = call(a, "POST", "/users", &format!(r#"{{"username": "u{u}"}}"#));
        assert_eq!(r.status, 200, "{}", r.text());
        let r = call(
            a,
            "POST",
            "/apps",
            &format!(r#"{{"userId": "u{u}", "name": "a{u}"}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        for (consumer, kind, credential) in [
            (
                format!("u{u}"),
                "basic-auth",
                r#"{"password": "pw"}"#.to_string(),
            ),
            (
                format!("a{u}"),
                "key-auth",
                format!(r#"{{"keyId": "k{u}", "keySecret": "s"}}"#),
            ),
            (
                format!("a{u}"),
                "key-auth",
                format!(r#"{{"keyId": "k{u}b", "keySecret": "s"}}"#),
            ),
            (
                format!("u{u}"),
                "jwt",
                format!(r#"{{"keyId": "j{u}", "keySecret": "s"}}"#),
            ),
        ]
        .into_iter()
        .skip(u % 3)
        {
            let body = format!(
                r#"{{"consumerId": "{consumer}", "type": "{kind}", "credential": {credential}}}"#
            );
            let r = call(a, "POST", "/credentials", &body);
            assert_eq!(r.status, 200, "{}", r.text());
            expected.push(consumer);
        }
    }
    let mut by_consumer = Vec::new();
    for u in 0..6 {
        for name in [format!("u{u}"), format!("a{u}")] {
            let kind = if name.starts_with('u') {
                "users"
            } else {
                "apps"
            };
            let owner = json(&get(a, "GET", &format!("/{kind}/{name}"), &[]));
            let id = owner["id"].as_str().expect("id").to_string();
            for c in json(&get(a, "GET", &format!("/credentials/{name}"), &[]))["credentials"]
                .as_array()
                .expect("credentials")
            {
                let mut c = c.clone();
                c["consumerId"] = serde_json::json!(id);
                by_consumer.push(sorted(&c));
            }
        }
    }
    let mut all: Vec<String> = json(&get(a, "GET", "/credentials", &[]))["credentials"]
        .as_array()
        .expect("credentials")
        .iter()
        .map(sorted)
        .collect();
    all.sort();
    by_consumer.sort();
    assert_eq!(all.len(), expected.len());
    assert_eq!(all, by_consumer);
}

/// Bodies as EG 1.16.11 reads them (each compared with it, on one Redis): its models' formats
/// on creation (`email`, `uri`: stored whatever they were), a byte order mark before the JSON
/// (refused), a body past 100 kB (a user of megabytes stored), a credential that is no
/// object (a key-auth one made of a list), `null` (stored as `null`, not nothing; refused for a
/// property of text).
#[test]
fn bodies_are_read_as_egs_are() {
    let dir = ConfigDir::new(
        "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints: {}\n",
    );
    std::fs::create_dir_all(dir.path.join("models")).expect("models");
    // EG's own models, as its package ships them.
    dir.write(
        "models/users.json",
        r#"{"type": "object", "properties": {"firstname": {"type": "string"}, "lastname": {"type": "string"}, "username": {"type": "string"}, "email": {"type": "string", "format": "email"}, "redirectUri": {"type": "string", "format": "uri"}}, "required": ["username", "firstname", "lastname"]}"#,
    );
    dir.write(
        "models/applications.json",
        r#"{"type": "object", "properties": {"name": {"type": "string"}, "redirectUri": {"type": "string", "format": "uri"}}, "required": ["name"]}"#,
    );
    let data = dir.path.join("data").display().to_string();
    let gw = GatewayProcess::start_with(&dir, &["--data-dir", &data], &[]);
    let a = gw.admin_port;
    let user =
        |extra: &str| format!(r#"{{"username": "ann", "firstname": "A", "lastname": "L"{extra}}}"#);
    for (extra, why) in [
        (
            r#", "email": "notanemail""#,
            r#"data.email should match format "email""#,
        ),
        // Letters that fold to ASCII ones (U+017F, U+212A) are no ASCII letters to ajv either.
        (
            r#", "email": "\u017f@x.io""#,
            r#"data.email should match format "email""#,
        ),
        (
            r#", "email": "\u212a@x.io""#,
            r#"data.email should match format "email""#,
        ),
        (
            r#", "redirectUri": "\u017fx:/y""#,
            r#"data.redirectUri should match format "uri""#,
        ),
        // JavaScript's white space: U+FEFF is one.
        (
            r#", "redirectUri": "http://a\ufeffb""#,
            r#"data.redirectUri should match format "uri""#,
        ),
        // `null` is the nothing ajv coerces it to, which no format takes.
        (
            r#", "email": null"#,
            r#"data.email should match format "email""#,
        ),
        (
            r#", "redirectUri": "not a uri""#,
            r#"data.redirectUri should match format "uri""#,
        ),
    ] {
        let r = call(a, "POST", "/users", &user(extra));
        assert_eq!((r.status, r.text()), (422, why.to_string()));
    }
    let r = call(
        a,
        "POST",
        "/users",
        &format!(
            "\u{feff}{}",
            user(
                r#", "email": "ann@example.com", "redirectUri": "https://x.example/cb", "note": null"#
            )
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let ann = json(&get(a, "GET", "/users/ann", &[]));
    assert_eq!(
        (&ann["email"], &ann["note"]),
        (
            &serde_json::json!("ann@example.com"),
            &serde_json::json!("")
        )
    );
    // On an update the formats are not checked (nor are they by EG).
    let r = call(a, "PUT", "/users/ann", r#"{"email": "still not one"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    // `null` for a property of text is a value given, stored as nothing, as EG's validator
    // (coercing types) has it: it was refused (required, or not text).
    let r = call(a, "PUT", "/users/ann", r#"{"email": null}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&get(a, "GET", "/users/ann", &[]))["email"], "");
    let r = call(
        a,
        "POST",
        "/users",
        r#"{"username": "cy", "firstname": null, "lastname": "L"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&get(a, "GET", "/users/cy", &[]))["firstname"], "");
    // But a user and an app have a name (EG made an app named nothing).
    for (path, body) in [
        (
            "/users",
            r#"{"username": null, "firstname": "F", "lastname": "L"}"#,
        ),
        ("/apps", r#"{"userId": "ann", "name": null}"#),
    ] {
        assert_eq!(call(a, "POST", path, body).status, 422, "{path}");
    }
    let r = call(
        a,
        "POST",
        "/apps",
        r#"{"userId": "ann", "name": "v", "redirectUri": "nope"}"#,
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (422, r#"data.redirectUri should match format "uri""#)
    );
    let big = user(&format!(r#", "note": "{}""#, "x".repeat(100 * 1024)));
    let r = call(a, "POST", "/users", &big.replace("ann", "bob"));
    assert_eq!(
        (r.status, r.text().as_str()),
        (413, "request entity too large")
    );
    let r = call(
        a,
        "POST",
        "/credentials",
        r#"{"consumerId": "ann", "type": "key-auth", "credential": [1]}"#,
    );
    assert_eq!(
        (r.status, r.text().as_str()),
        (422, "data.credential should be object")
    );
    assert_eq!(
        json(&get(a, "GET", "/credentials/ann", &[]))["credentials"],
        serde_json::json!([])
    );
}

/// A request body that trickles in — a byte within every body timeout — is cut at the request
/// timeout with a `408` and the connection closed, as on the gateway's port (it held an Admin
/// API connection, of the 256 there are, for as long as the client went on).
#[test]
fn a_trickling_body_is_cut_at_the_request_timeout() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let (_d, gw) = gateway(&["--request-timeout", "2", "--body-timeout", "4"]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.admin_port)).expect("connect");
    s.write_all(
        b"POST /users HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n{",
    )
    .expect("head");
    let started = Instant::now();
    let mut writer = s.try_clone().expect("clone");
    let trickle = std::thread::spawn(move || {
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(300));
            if writer.write_all(b" ").is_err() {
                return;
            }
        }
    });
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let took = started.elapsed();
    let _ = trickle.join();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        took < Duration::from_secs(5),
        "answered after {took:?}: the request timeout was not applied"
    );
}

/// The Admin API's consumer writes take turns: concurrent creates of one username, of one key
/// id for two consumers, of one app name each make one (the others 409) — each checked the
/// store and then wrote (on Redis 20 at once made 20 users of one name: `redis_store`). A user id that is an
/// application's is refused (deleting the user deleted the app's credentials), and a page
/// asked for far past the end is empty (its arithmetic overflowed: a panic, no answer).
#[test]
fn concurrent_writes_make_one_of_each_and_ids_stay_apart() {
    let (_d, gw) = gateway(&[]);
    let port = gw.admin_port;
    let at_once = |n: usize, make: &(dyn Fn(usize) -> (String, String) + Sync)| -> Vec<u16> {
        std::thread::scope(|s| {
            let calls: Vec<_> = (0..n)
                .map(|i| {
                    s.spawn(move || {
                        let (path, body) = make(i);
                        call(port, "POST", &path, &body).status
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().expect("call")).collect()
        })
    };
    let ok = |statuses: &[u16]| statuses.iter().filter(|s| **s < 300).count();
    let users = at_once(20, &|_| {
        ("/users".into(), r#"{"username": "racer"}"#.into())
    });
    assert_eq!(ok(&users), 1, "{users:?}");
    assert!(users.iter().all(|s| *s < 300 || *s == 409), "{users:?}");
    for name in ["r0", "r1"] {
        let r = call(
            port,
            "POST",
            "/users",
            &format!(r#"{{"username": "{name}"}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let keys = at_once(20, &|i| {
        (
            "/credentials".into(),
            format!(
                r#"{{"consumerId": "r{}", "type": "key-auth", "credential": {{"keyId": "racekey", "keySecret": "s{i}"}}}}"#,
                i % 2
            ),
        )
    });
    assert_eq!(ok(&keys), 1, "{keys:?}");
    let apps = at_once(20, &|_| {
        (
            "/apps".into(),
            r#"{"userId": "r0", "name": "raceapp"}"#.into(),
        )
    });
    assert_eq!(ok(&apps), 1, "{apps:?}");
    assert_eq!(call(port, "GET", "/apps/raceapp", "").status, 200);
    // A user whose id is an application's.
    let app_id = json(&call(port, "GET", "/apps/raceapp", ""))["id"]
        .as_str()
        .expect("app id")
        .to_string();
    let r = call(
        port,
        "POST",
        "/users",
        &format!(r#"{{"username": "mallory", "id": "{app_id}"}}"#),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    // A page far past the end.
    let r = get(
        port,
        "GET",
        "/users?start=18446744073709551615&count=10",
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["nextKey"], 0, "{}", r.text());
}

/// A key is accepted as soon as its creation is answered, and refused as soon as its
/// revocation is (the gateway's own cache follows each write before it is answered: a key
/// just created was refused for some milliseconds after its `201`).
#[test]
fn a_key_works_as_soon_as_its_creation_is_answered() {
    let dir = ConfigDir::new(
        "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints:\n  k: {paths: '/k/*'}\npolicies: [key-auth, terminate]\npipelines:\n  k:\n    apiEndpoints: [k]\n    policies:\n      - key-auth:\n      - terminate: [{action: {statusCode: 200, message: ok}}]\n",
    );
    let data = dir.path.join("data").display().to_string();
    let gw = GatewayProcess::start_with(&dir, &["--data-dir", &data], &[]);
    for i in 0..60 {
        let r = call(
            gw.admin_port,
            "POST",
            "/users",
            &format!(r#"{{"username": "u{i}"}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let r = call(
            gw.admin_port,
            "POST",
            "/credentials",
            &format!(
                r#"{{"consumerId": "u{i}", "type": "key-auth", "credential": {{"keyId": "K{i}", "keySecret": "S{i}"}}}}"#
            ),
        );
        assert!(r.status < 300, "{}", r.text());
        let key = format!("apiKey K{i}:S{i}");
        let r = get(
            gw.port,
            "GET",
            "/k/t.png",
            &[("Authorization", key.as_str())],
        );
        assert_eq!(r.status, 200, "key {i}: {}", r.text());
        let r = call(
            gw.admin_port,
            "PUT",
            &format!("/credentials/key-auth/K{i}/status"),
            r#"{"status": false}"#,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let r = get(
            gw.port,
            "GET",
            "/k/t.png",
            &[("Authorization", key.as_str())],
        );
        assert_eq!(r.status, 401, "key {i} revoked");
    }
}
