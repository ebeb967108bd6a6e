//! Fault tests for pin-file writes: `pinctl` killed at every step of a write
//! leaves the old file or the new one, never a partial one; a read-only
//! directory gives a clear error and an intact file.

use std::path::Path;
use std::process::Command;

use fedpin::pins::{Pin, PinSet};

fn pinctl(pins: &Path, args: &[&str], fault: Option<&str>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pinctl"));
    c.arg("--pins").arg(pins).args(args);
    if let Some(f) = fault {
        c.env("FEDPIN_FAULT", f);
    }
    c.output().unwrap()
}

fn pin(n: u8) -> String {
    Pin::of_spki(&[n, 1, 2]).to_string()
}

#[test]
fn killed_at_every_write_step_leaves_old_or_new_file() {
    for (i, step) in ["after-create", "after-write", "after-fsync", "after-rename"]
        .iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        let out = pinctl(
            &path,
            &["add", "a.example", "--pin", &pin(1), "--pin", &pin(2)],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let before = std::fs::read(&path).unwrap();

        let out = pinctl(
            &path,
            &["add", "b.example", "--pin", &pin(3), "--pin", &pin(4)],
            Some(step),
        );
        assert!(
            !out.status.success(),
            "{step}: the fault point must kill pinctl"
        );

        let after = std::fs::read(&path).unwrap();
        let set = PinSet::parse_bytes(&after)
            .unwrap_or_else(|e| panic!("{step}: partial or broken file: {e}"));
        if i < 3 {
            assert_eq!(
                after, before,
                "{step}: killed before the rename, the old file stays"
            );
        } else {
            assert!(
                set.by_server_name("b.example").is_some(),
                "{step}: renamed, the new file is in place"
            );
        }
        // The lock died with the process: the next write goes through.
        let out = pinctl(
            &path,
            &["add", "c.example", "--pin", &pin(5), "--pin", &pin(6)],
            None,
        );
        assert!(
            out.status.success(),
            "{step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(PinSet::load(&path)
            .unwrap()
            .by_server_name("c.example")
            .is_some());
    }
}

#[cfg(unix)]
#[test]
fn read_only_directory_gives_a_clear_error_and_an_intact_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    assert!(pinctl(
        &path,
        &["add", "a.example", "--pin", &pin(1), "--pin", &pin(2)],
        None
    )
    .status
    .success());
    let before = std::fs::read(&path).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root ignores directory permissions; only assert where they apply.
    let probe = std::fs::File::create(dir.path().join("probe"));
    if probe.is_ok() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        eprintln!(
            "running as root: directory permissions do not apply; skipping the read-only case"
        );
        return;
    }
    let out = pinctl(
        &path,
        &["add", "b.example", "--pin", &pin(3), "--pin", &pin(4)],
        None,
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file is intact");
}
