//! The `fedpin` binary: demo, check-config (every example config), ca init, run.

mod common;

use common::process::{ca_init, describe, fedpin, with_config};
use std::os::unix::fs::PermissionsExt;

/// `fedpin ca init` into `ca/` of a new temporary directory: the
/// directory, `ca/` and what the command did.
fn ca_in_tempdir() -> (tempfile::TempDir, std::path::PathBuf, std::process::Output) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let out = ca_init(&ca);
    (dir, ca, out)
}

#[test]
fn demo_passes_genuine_and_blocks_impostor() {
    let out = fedpin().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("PASSED   genuine peer"), "{stdout}");
    assert!(
        stdout.contains("BLOCKED  impostor: the homeserver got: 502"),
        "{stdout}"
    );
    let alert_line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("alert JSON printed");
    let v: serde_json::Value = serde_json::from_str(alert_line).unwrap();
    assert_eq!(v["event"], "pin_mismatch");
    assert_eq!(v["severity"], "critical");
    assert_eq!(v["direction"], "outbound");
}

/// Every example config passes `fedpin check-config` (with a CA made by `ca init`).
#[test]
fn example_configs_pass_check_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        // Lay the example out as in the repository, with a fresh CA beside it.
        let case = dir.path().join(format!("case{checked}"));
        let examples = case.join("examples");
        std::fs::create_dir_all(&examples).unwrap();
        std::fs::create_dir_all(case.join("pins")).unwrap();
        std::fs::copy(root.join("pins/pins.toml"), case.join("pins/pins.toml")).unwrap();
        let cfg = examples.join(path.file_name().unwrap());
        std::fs::copy(&path, &cfg).unwrap();
        let init = ca_init(&examples.join("ca"));
        assert!(init.status.success(), "{}", describe(&init));
        let out = with_config("check-config", &cfg);
        let path = path.display();
        assert!(
            out.status.success(),
            "{path} failed check-config:\n{}",
            describe(&out)
        );
        checked += 1;
    }
    assert!(checked >= 1);
}

#[test]
fn check_config_locates_errors_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fedpin.toml");
    std::fs::write(&cfg, "pins = \"pins.toml\"\n[outbound]\nlisten = \"not an address\"\nca_cert = \"missing.pem\"\nca_key = \"missing.key\"\n").unwrap();
    let out = with_config("check-config", &cfg);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("outbound.listen"),
        "{err}"
    );
    assert!(
        err.contains("line 4") && err.contains("outbound.ca_cert"),
        "{err}"
    );
    // A broken pin file is also a config error.
    std::fs::write(&cfg, "pins = \"pins.toml\"\n").unwrap();
    std::fs::write(
        dir.path().join("pins.toml"),
        "version = 1\n[[peer]]\nserver_name = \"a.example\"\npins = [\"sha256/x\"]\n",
    )
    .unwrap();
    let out = with_config("check-config", &cfg);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 4"));
}

#[test]
fn ca_init_writes_0600_key_and_refuses_to_overwrite() {
    let (_dir, ca, out) = ca_in_tempdir();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("federation_custom_ca_list"), "{stdout}");
    assert!(stdout.contains("HTTPS_PROXY"), "{stdout}");
    let mode = std::fs::metadata(ca.join("fedpin-ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let pem = std::fs::read(ca.join("fedpin-ca.pem")).unwrap();
    let items = fedpin::verify::pins_of_pem_or_der(&pem).unwrap();
    assert_eq!(items.len(), 1);
    let again = ca_init(&ca);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
}

#[test]
fn run_refuses_a_group_readable_ca_key() {
    let (dir, ca, out) = ca_in_tempdir();
    assert!(out.status.success());
    std::fs::set_permissions(
        ca.join("fedpin-ca.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::write(dir.path().join("pins.toml"), "version = 1\n").unwrap();
    let cfg = dir.path().join("fedpin.toml");
    std::fs::write(&cfg, "pins = \"pins.toml\"\n[outbound]\nlisten = \"127.0.0.1:0\"\nca_cert = \"ca/fedpin-ca.pem\"\nca_key = \"ca/fedpin-ca.key\"\n").unwrap();
    let out = with_config("run", &cfg);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

/// Plain `http://` alert URLs are allowed only to a loopback host, decided on
/// the parsed URL: hosts that merely start like loopback (`127.attacker…`,
/// `localhost.attacker…`) and URLs with userinfo are refused with exit 64 and
/// the key named, for both the webhook and the Matrix sink.
#[test]
fn check_config_refuses_alert_urls_that_only_look_like_loopback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pins.toml"), "version = 1\n").unwrap();
    std::fs::write(dir.path().join("token"), "secret\n").unwrap();
    let cfg = dir.path().join("fedpin.toml");
    let check = |alerts: &str| {
        std::fs::write(&cfg, format!("pins = \"pins.toml\"\n[alerts]\n{alerts}")).unwrap();
        with_config("check-config", &cfg)
    };
    let webhook = |u: &str| format!("webhook = \"{u}\"\n");
    let matrix = |u: &str| {
        format!(
            "matrix_homeserver = \"{u}\"\nmatrix_room = \"!ops:example.org\"\nmatrix_token_file = \"token\"\n"
        )
    };
    let bad = [
        "http://127.attacker.example/hook",
        "http://localhost.attacker.example/",
        "http://127.0.0.1.attacker.example/",
        "http://localhostx/",
        "http://[::2]:9/x",
        "http://user:pw@127.0.0.1:9/x",
        "https://user@alerts.example/hook",
        "ftp://127.0.0.1/x",
        "not a url",
    ];
    for u in bad {
        for (key, alerts) in [
            ("alerts.webhook", webhook(u)),
            ("alerts.matrix_homeserver", matrix(u)),
        ] {
            let out = check(&alerts);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{u} accepted as {key}: {err}");
            assert!(err.contains(key) && err.contains("line "), "{u}: {err}");
        }
    }
    let good = [
        "http://127.0.0.1:9/x",
        "http://127.1.2.3/x",
        "http://[::1]:9/x",
        "http://localhost:9/x",
        "http://LOCALHOST/x",
        "https://alerts.example/hook",
    ];
    for u in good {
        for alerts in [webhook(u), matrix(u)] {
            let out = check(&alerts);
            assert!(
                out.status.success(),
                "{u} refused: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
