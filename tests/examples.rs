//! The operator files under `examples/`: systemd units, the pinctl-verify
//! wrapper, the Kubernetes manifest's fedpin config, the Prometheus rules.
//! Each is checked with the program that consumes it where that program is
//! installed (systemd-analyze, promtool, python3 for the wrapper), and
//! skipped with a printed note where it is not. The checks that need only
//! fedpin and pinctl always run.
#![cfg(unix)]

mod common;

use common::block_scalar;
use common::process::{ca_init, describe, with_config};

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const FEDPIN: &str = env!("CARGO_BIN_EXE_fedpin");
const PINCTL: &str = env!("CARGO_BIN_EXE_pinctl");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write_file(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn make_executable(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Whether `tool arg` runs and succeeds (a cheap "is it installed").
fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn skipped(what: &str) {
    eprintln!("SKIPPED (test passes without checking): {what}");
}

/// The words of the unit's (first, uncommented) `ExecStart=` line.
fn exec_start(unit: &str) -> Vec<String> {
    unit.lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("no ExecStart= in\n{unit}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The words of the ExecStart= line of the example `unit`, with the
/// installed binary and file (`(installed, here)` each) replaced.
fn exec_start_as(unit: &str, binary: (&str, &str), file: (&str, &str)) -> Vec<String> {
    let words = exec_start(&read(&examples().join(unit)));
    let here = |w: String| match w {
        w if w == binary.0 => binary.1.to_string(),
        w if w == file.0 => file.1.to_string(),
        w => w,
    };
    words.into_iter().map(here).collect()
}

/// The unit with its active ExecStart= binaries replaced by the built ones
/// (systemd-analyze verify checks that ExecStart binaries exist).
fn with_built_binaries(unit: &str) -> String {
    let mut out = String::new();
    for line in unit.lines() {
        if line.starts_with("ExecStart=") {
            out.push_str(
                &line
                    .replace("/usr/local/bin/fedpin", FEDPIN)
                    .replace("/usr/local/bin/pinctl", PINCTL),
            );
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

// ------------------------------------------------------------- systemd units

/// `systemd-analyze verify` on the units (and the Synapse drop-in, on a
/// stand-in Synapse unit). It exits 0 even on unknown keys or unparsable
/// values (it only prints them), so any output line fails the test too.
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if !have("systemd-analyze", "--version") {
        skipped("systemd-analyze is not installed; the systemd units were not verified");
        return;
    }
    let sd = examples().join("systemd");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    for name in ["fedpin.service", "pinctl-verify.service"] {
        write_file(&d.join(name), &with_built_binaries(&read(&sd.join(name))));
    }
    write_file(
        &d.join("pinctl-verify.timer"),
        &read(&sd.join("pinctl-verify.timer")),
    );
    // The Synapse drop-in, on a stand-in for Synapse's own unit.
    write_file(
        &d.join("matrix-synapse.service"),
        "[Unit]\nDescription=stand-in for the Synapse unit\n[Service]\nExecStart=/bin/true\n",
    );
    write_file(
        &d.join("matrix-synapse.service.d/fedpin-proxy.conf"),
        &read(&examples().join("synapse/synapse-proxy.conf")),
    );
    let mut units: Vec<PathBuf> = [
        "fedpin.service",
        "pinctl-verify.service",
        "pinctl-verify.timer",
        "matrix-synapse.service",
    ]
    .iter()
    .map(|n| d.join(n))
    .collect();

    // The documented alternative: the service running the wrapper instead.
    let unit = read(&sd.join("pinctl-verify.service"));
    let suggested = unit
        .lines()
        .find_map(|l| {
            l.trim_start_matches(['#', ' '])
                .strip_prefix("ExecStart=/usr/local/lib/fedpin/pinctl-verify-check.sh")
        })
        .expect("pinctl-verify.service documents the wrapper's ExecStart= line");
    let wrapper = d.join("alt/pinctl-verify-check.sh");
    write_file(&wrapper, &read(&sd.join("pinctl-verify-check.sh")));
    make_executable(&wrapper);
    let alt: String = unit
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!("ExecStart={}{suggested}\n", wrapper.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    write_file(&d.join("alt/pinctl-verify.service"), &alt);
    units.push(d.join("alt/pinctl-verify.service"));

    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", d.display()))
        .current_dir(d)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Only complaints about what exists on a real host and not here (the
    // fedpin user, /etc/fedpin, /etc/letsencrypt) would be acceptable.
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            !(l.contains("/etc/fedpin")
                || l.contains("/etc/letsencrypt")
                || (l.contains("fedpin") && l.to_lowercase().contains("user")))
        })
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify {units:?}:\n{}",
        describe(&out)
    );
}

// --------------------------------------------------------- pinctl-verify-check.sh

fn wrapper_path() -> PathBuf {
    examples().join("systemd/pinctl-verify-check.sh")
}

/// Runs the wrapper with `sh` (so a checkout without the x bit works).
/// Runs the wrapper with `args` on `input`; asserts its exit `code` and
/// that its stdout holds `says`.
#[track_caller]
fn wrapper_says(args: &[&str], input: &str, code: i32, says: &str) -> Output {
    let out = run_wrapper(args, input, &[]);
    assert_eq!(out.status.code(), Some(code), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(says), "{}", describe(&out));
    out
}

fn run_wrapper(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new("sh")
        .arg(wrapper_path())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The wrapper may exit (bad argument) before it reads its input: a
    // broken pipe then is its answer, not a test failure.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing stdin: {e}"
        );
    }
    child.wait_with_output().unwrap()
}

fn python3_missing() -> bool {
    if have("python3", "--version") {
        return false;
    }
    skipped("python3 is not installed; pinctl-verify-check.sh was not run");
    true
}

fn peer_json(name: &str, status: &str, cert_days: Option<i64>, pins_days: Option<i64>) -> String {
    serde_json::json!({
        "server_name": name,
        "target": format!("{name}:8448 as {name}"),
        "status": status,
        "detail": if status == "ok" { "Pinned".to_string() } else { format!("{status} detail for {name}") },
        "cert_days_left": cert_days,
        "pins_days_left": pins_days,
    })
    .to_string()
}

#[test]
fn wrapper_judges_pinctl_json_from_stdin() {
    if python3_missing() {
        return;
    }
    let ok = format!(
        "[{}, {}]",
        peer_json("a.example", "ok", Some(60), None),
        peer_json("b.example", "ok", Some(40), Some(200))
    );
    wrapper_says(&["--stdin"], &ok, 0, "");

    let mismatch = format!(
        "[{}, {}]",
        peer_json("a.example", "ok", Some(60), None),
        peer_json("evil.example", "mismatch", None, None)
    );
    let out = wrapper_says(&["--stdin"], &mismatch, 1, "MISMATCH evil.example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("a.example:"), "{}", describe(&out));

    let error = format!("[{}]", peer_json("gone.example", "error", None, None));
    wrapper_says(&["--stdin"], &error, 1, "");

    // Near expiry: the certificate (10 days) or the pins (3 days), against
    // the default threshold (14) and a given one.
    let cert_soon = format!("[{}]", peer_json("a.example", "ok", Some(10), None));
    wrapper_says(
        &["--stdin"],
        &cert_soon,
        1,
        "EXPIRING a.example: certificate",
    );
    wrapper_says(&["--stdin", "7"], &cert_soon, 0, "");
    let pins_soon = format!("[{}]", peer_json("a.example", "ok", Some(80), Some(3)));
    wrapper_says(&["--stdin"], &pins_soon, 1, "EXPIRING a.example: pins");

    // Not pinctl's JSON, or a bad argument: 2.
    for bad in ["", "not json", "{\"status\": \"ok\"}", "[1, 2]"] {
        let out = run_wrapper(&["--stdin"], bad, &[]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "input {bad:?}: {}",
            describe(&out)
        );
    }
    wrapper_says(&["--stdin", "soon"], "[]", 2, "");
}

/// The wrapper runs `pinctl --pins $FEDPIN_PINS verify --json` (found on
/// PATH), and trusts pinctl's exit code as well as its JSON.
#[test]
fn wrapper_runs_pinctl_and_keeps_its_exit_code() {
    if python3_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("pinctl");
    let args_file = dir.path().join("args");
    write_file(
        &fake,
        "#!/bin/sh\nprintf '%s\\n' \"$*\" > \"$FAKE_ARGS\"\nprintf '%s' \"$FAKE_JSON\"\nexit \"$FAKE_RC\"\n",
    );
    make_executable(&fake);
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let args_env = args_file.display().to_string();
    let run = |json: &str, rc: &str| {
        run_wrapper(
            &[],
            "",
            &[
                ("PATH", path.as_str()),
                ("FEDPIN_PINS", "/srv/pins.toml"),
                ("FAKE_ARGS", args_env.as_str()),
                ("FAKE_JSON", json),
                ("FAKE_RC", rc),
            ],
        )
    };
    let ok = format!("[{}]", peer_json("a.example", "ok", Some(60), None));
    let mismatch = format!("[{}]", peer_json("a.example", "mismatch", None, None));

    let out = run(&ok, "0");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        read(&args_file).trim(),
        "--pins /srv/pins.toml verify --json"
    );

    let out = run(&mismatch, "1");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    // pinctl failed although the JSON looks clean: still a failure.
    let out = run(&ok, "1");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    // A broken pin file (pinctl exits 64 before checking anything).
    let out = run("", "64");
    assert_eq!(out.status.code(), Some(64), "{}", describe(&out));
}

/// The unit's own command line and the wrapper against real pinctl and a
/// live (loopback, self-signed, pin-only) peer: ok, then pins about to
/// expire, then a peer that is down.
#[tokio::test(flavor = "multi_thread")]
async fn pinctl_verify_unit_and_wrapper_on_a_live_peer() {
    let leaf = common::self_signed(&["127.0.0.1"]);
    let addr = common::serve(vec![leaf.cert.clone()], leaf.key_der()).await;
    let pin = common::pin(&leaf.cert).to_string();
    tokio::task::spawn_blocking(move || live_peer_checks(addr, &pin))
        .await
        .unwrap();
}

fn pin_file(server_name: &str, pin: &str, expires: Option<&str>) -> String {
    let mut t = format!(
        "version = 1\n[policy]\nunpinned = \"deny\"\non_expired = \"deny\"\n\n[[peer]]\n\
         server_name = \"{server_name}\"\npins = [\"{pin}\", \"sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n\
         trust = \"pin-only\"\n"
    );
    if let Some(e) = expires {
        t.push_str(&format!("expires = \"{e}\"\n"));
    }
    t
}

fn live_peer_checks(addr: SocketAddr, pin: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pins = dir.path().join("pins.toml");
    let pins_s = pins.display().to_string();
    let name = format!("127.0.0.1:{}", addr.port());
    write_file(&pins, &pin_file(&name, pin, None));

    // pinctl-verify.service's ExecStart=, with the built pinctl and this pin file.
    let unit = "systemd/pinctl-verify.service";
    let argv = exec_start_as(
        unit,
        ("/usr/local/bin/pinctl", PINCTL),
        ("/etc/fedpin/pins.toml", &pins_s),
    );
    assert!(argv.contains(&"--json".to_string()), "{argv:?}");
    let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{argv:?}: {}", describe(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", describe(&out)));
    assert_eq!(v[0]["status"], "ok", "{v}");
    assert!(v[0]["cert_days_left"].as_i64().unwrap() > 14, "{v}");
    let unit_json = String::from_utf8_lossy(&out.stdout).to_string();

    if python3_missing() {
        return;
    }
    let env = [("PINCTL", PINCTL), ("FEDPIN_PINS", pins_s.as_str())];
    let out = run_wrapper(&[], "", &env);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // The same JSON fed on stdin gives the same verdict.
    let out = run_wrapper(&["--stdin"], &unit_json, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // Pins that expire in 5 days: still "ok" for pinctl, not for the wrapper.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(6);
    let expires = format!("{}T00:00:00Z", soon.date());
    write_file(&pins, &pin_file(&name, pin, Some(&expires)));
    let out = run_wrapper(&[], "", &env);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("EXPIRING"),
        "{}",
        describe(&out)
    );

    // A peer that is down: pinctl says "error", the wrapper fails.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead_name = format!("127.0.0.1:{}", dead.port());
    write_file(&pins, &pin_file(&dead_name, pin, None));
    let out = run_wrapper(&[], "", &env);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("ERROR {dead_name}")),
        "{}",
        describe(&out)
    );
}

// ------------------------------------------------------------------ Kubernetes

/// The fedpin.toml and pins.toml that the Kubernetes manifest mounts pass
/// `fedpin check-config`, with the pod's absolute paths moved into a temp
/// dir holding a CA from `fedpin ca init` and a certificate pair.
#[test]
fn kubernetes_configmaps_pass_check_config() {
    let yaml = read(&examples().join("kubernetes/fedpin.yaml"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = block_scalar(&yaml, "fedpin.toml")
        .replace("/run/fedpin/ca/", &format!("{}/ca/", d.display()))
        .replace("/etc/fedpin-tls/", &format!("{}/tls/", d.display()));
    let pod_paths: Vec<&str> = config
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter(|l| l.contains("\"/etc/") || l.contains("\"/run/"))
        .collect();
    assert!(pod_paths.is_empty(), "unmapped pod paths: {pod_paths:?}");
    write_file(&d.join("fedpin.toml"), &config);
    write_file(&d.join("pins.toml"), &block_scalar(&yaml, "pins.toml"));

    let init = ca_init(&d.join("ca"));
    assert!(init.status.success(), "{}", describe(&init));
    let server =
        rcgen::generate_simple_self_signed(vec!["matrix.example.org".to_string()]).unwrap();
    write_file(&d.join("tls/tls.crt"), &server.cert.pem());
    write_file(&d.join("tls/tls.key"), &server.signing_key.serialize_pem());

    let out = with_config("check-config", &d.join("fedpin.toml"));
    assert!(out.status.success(), "{config}\n{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "outbound: listen 0.0.0.0:8449",
        "inbound: listen 0.0.0.0:8448 -> http://synapse-federation:8008",
        "admin: listen 0.0.0.0:9448",
    ] {
        assert!(
            stdout.contains(want),
            "missing {want:?}:\n{}",
            describe(&out)
        );
    }
    // The Deployment starts fedpin the way the systemd unit does.
    assert!(
        yaml.contains(r#"args: ["run", "--config", "/etc/fedpin/fedpin.toml"]"#),
        "fedpin container args"
    );
    // A subPath mount never sees the ConfigMap's `..data` swap.
    assert!(
        !yaml
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("subPath")),
        "a volume is mounted with subPath"
    );
}

// ------------------------------------------------------------------ Prometheus

fn rules_text() -> String {
    read(&examples().join("prometheus/fedpin-rules.yml"))
}

/// A light structural check (no YAML parser here), then promtool's own
/// `check rules` and unit tests when promtool is installed.
#[test]
fn prometheus_rules_are_well_formed() {
    let text = rules_text();
    assert!(text.lines().any(|l| l == "groups:"), "no top-level groups:");
    assert!(
        text.lines().any(|l| l.trim() == "- name: fedpin"),
        "no group named fedpin"
    );
    let chunks: Vec<&str> = text.split("      - alert: ").skip(1).collect();
    let mut names = BTreeSet::new();
    for chunk in &chunks {
        let name = chunk.lines().next().unwrap().trim();
        assert!(names.insert(name), "alert {name} defined twice");
        for field in "expr: labels: annotations: summary: description: runbook:".split(' ') {
            assert!(chunk.contains(field), "alert {name} has no {field}");
        }
        assert!(
            chunk.contains("severity: critical") || chunk.contains("severity: warning"),
            "alert {name} has no severity label"
        );
    }
    for want in [
        "FedpinPinMismatchCritical",
        "FedpinPinReloadFailed",
        "FedpinAlertSinkFailing",
        "FedpinAlertSinkDropping",
        "FedpinInboundCertReloadFailed",
        "FedpinOutboundBlockedSpike",
    ] {
        assert!(names.contains(want), "no alert {want}: {names:?}");
    }
    for expr in [
        r#"increase(fedpin_alerts_total{event="pin_mismatch",severity="critical"}[5m]) > 0"#,
        r#"increase(fedpin_pin_reloads_total{result="failed"}[10m]) > 0"#,
    ] {
        assert!(text.contains(expr), "missing expression {expr}");
    }

    if !have("promtool", "--version") {
        skipped("promtool is not installed; fedpin-rules.yml was not checked by Prometheus");
        return;
    }
    let dir = examples().join("prometheus");
    for args in [
        ["check", "rules", "fedpin-rules.yml"],
        ["test", "rules", "fedpin-rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}",
            describe(&out)
        );
    }
}

/// Kills the child on drop.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.1 200").then_some(body)
}

/// Every `fedpin_*` series the rules name is one a running fedpin exports.
/// fedpin is started with the systemd unit's own ExecStart= line (paths
/// moved to a temp dir), with outbound, inbound and admin configured, and
/// made to raise one alert so that fedpin_alerts_total exists.
#[test]
fn prometheus_rules_use_only_metrics_fedpin_exports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let init = ca_init(&d.join("ca"));
    assert!(init.status.success(), "{}", describe(&init));
    let server = rcgen::generate_simple_self_signed(vec!["hs.example".to_string()]).unwrap();
    write_file(&d.join("tls/cert.pem"), &server.cert.pem());
    write_file(&d.join("tls/key.pem"), &server.signing_key.serialize_pem());
    let pins = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("pins/pins.toml"));
    write_file(&d.join("pins.toml"), &pins);
    let admin = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    write_file(
        &d.join("fedpin.toml"),
        &format!(
            "pins = \"pins.toml\"\n\
             [outbound]\nlisten = \"127.0.0.1:0\"\nca_cert = \"ca/fedpin-ca.pem\"\nca_key = \"ca/fedpin-ca.key\"\n\
             [inbound]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\nupstream = \"http://127.0.0.1:9\"\n\
             [admin]\nlisten = \"{admin}\"\n"
        ),
    );
    let config = d.join("fedpin.toml").display().to_string();
    let unit = "systemd/fedpin.service";
    let argv = exec_start_as(
        unit,
        ("/usr/local/bin/fedpin", FEDPIN),
        ("/etc/fedpin/fedpin.toml", &config),
    );
    let _fedpin = common::process::Reaped(
        Command::new(&argv[0])
            .args(&argv[1..])
            .env("FEDPIN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(admin, "/healthz").is_none() {
        assert!(
            Instant::now() < deadline,
            "fedpin ({argv:?}) did not answer /healthz on {admin}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A broken pin file: rejected, with a pin_reload_failed alert.
    write_file(&d.join("pins.toml"), &format!("{pins}\nbogus = 1\n"));
    let metrics = loop {
        let m = http_get(admin, "/metrics").unwrap_or_default();
        if m.contains("fedpin_alerts_total{") {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no fedpin_alerts_total after a broken pin file:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("fedpin_"))
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();

    let text = rules_text();
    let mut used = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("fedpin_") {
        let token: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[i + token.len()..];
        used.insert(token);
    }
    assert!(used.len() >= 8, "{used:?}");
    let unknown: Vec<&String> = used
        .iter()
        .filter(|t| !exported.contains(t.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the rules name series fedpin does not export: {unknown:?}\nexported: {exported:?}"
    );
}
