//! Fault tests for pin-file writes: `pinctl` killed at every step of a write
//! leaves the old file or the new one, never a partial one; a full disk, a
//! read-only file system or a read-only directory gives a clear error naming
//! the file, an intact file and no leftover temporary file. The full and
//! read-only file systems are real tmpfs mounts where the test may mount
//! (root, as on CI), and injected OS errors (`FEDPIN_FAULT=write:enospc`,
//! `create:erofs`) everywhere.

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

/// Names of leftover temporary files in `dir` (a failed write must remove its own).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pins-"))
        .collect()
}

/// Adds a second peer to a file holding one and expects a clean refusal
/// naming `os_error`, with the file byte-for-byte intact and no temp file left.
fn refused_write_keeps_the_file(path: &Path, fault: Option<&str>, os_error: &str) {
    let before = std::fs::read(path).unwrap();
    let out = pinctl(
        path,
        &["add", "b.example", "--pin", &pin(3), "--pin", &pin(4)],
        fault,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains(os_error), "{err}");
    assert!(
        err.contains(".pins-") || err.contains("pins.toml"),
        "names the file: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(path).unwrap(), before, "the file is intact");
    assert!(PinSet::parse_bytes(&before).is_ok());
    assert_eq!(leftovers(path.parent().unwrap()), Vec::<String>::new());
}

fn with_one_peer(path: &Path) {
    let out = pinctl(
        path,
        &["add", "a.example", "--pin", &pin(1), "--pin", &pin(2)],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small tmpfs mounted for one test, when this process may mount (root
/// with CAP_SYS_ADMIN, as on the CI machines); unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn remount_read_only(&self) -> bool {
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn full_disk_gives_a_clear_error_and_an_intact_file() {
    // Injected ENOSPC on the write step: runs on every machine.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    with_one_peer(&path);
    refused_write_keeps_the_file(&path, Some("write:enospc"), "No space left on device");

    // A real full file system, where the test may mount one.
    let Some(fs) = Tmpfs::mount("64k") else {
        eprintln!("cannot mount a tmpfs here: only the injected ENOSPC case ran");
        return;
    };
    let path = fs.path().join("pins.toml");
    with_one_peer(&path);
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(fs.path().join("filler")).unwrap();
        let block = [0u8; 4096];
        while filler.write_all(&block).is_ok() {}
    }
    refused_write_keeps_the_file(&path, None, "No space left on device");
}

#[test]
fn read_only_file_system_gives_a_clear_error_and_an_intact_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins.toml");
    with_one_peer(&path);
    refused_write_keeps_the_file(&path, Some("create:erofs"), "Read-only file system");

    let Some(fs) = Tmpfs::mount("1m") else {
        eprintln!("cannot mount a tmpfs here: only the injected EROFS case ran");
        return;
    };
    let path = fs.path().join("pins.toml");
    with_one_peer(&path);
    assert!(fs.remount_read_only(), "remount read-only");
    refused_write_keeps_the_file(&path, None, "Read-only file system");
}
