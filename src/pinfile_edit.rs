//! Pin-file edits for `pinctl`: comment- and layout-preserving (toml_edit),
//! validated before they are written, atomic (temp file in the same
//! directory, fsync, rename, fsync of the directory) and serialised by an
//! exclusive lock on `<file>.lock`, so concurrent `pinctl` runs both land.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table};

#[cfg(test)]
use crate::pins::Pin;
use crate::pins::{Mode, PeerEntry, PinFileError, PinSet, Trust};

/// Errors editing the pin file.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// Reading, locking or writing failed.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The current file is not valid TOML (it is left untouched).
    #[error("{path}: cannot edit a file that is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// The edit would produce an invalid pin file (nothing was written).
    #[error("the edit was not written because the result would be invalid:\n{0}")]
    Invalid(PinFileError),
    /// `remove` of a server name that is not in the file.
    #[error("{path}: no peer with server_name \"{server_name}\"")]
    NotFound {
        /// The file.
        path: String,
        /// The name asked for.
        server_name: String,
    },
}

/// A peer entry to add: the typed entry [`PinSet::from_entries`] validates.
pub type NewPeer = PeerEntry;

/// What `add_peer` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddOutcome {
    /// A new `[[peer]]` entry was appended.
    Added,
    /// The peer existed; this many new pins were appended to it.
    Extended(usize),
}

const NEW_FILE: &str = "# fedpin pin file (see `pinctl --help`)\nversion = 1\n\n[policy]\nunpinned = \"webpki\"\non_expired = \"webpki\"\n";

fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> EditError + 'a {
    move |source| EditError::Io {
        path: path.display().to_string(),
        action,
        source,
    }
}

fn syntax(path: &Path, message: String) -> EditError {
    EditError::Syntax {
        path: path.display().to_string(),
        message,
    }
}

fn parse_doc(path: &Path, text: &str) -> Result<DocumentMut, EditError> {
    text.parse()
        .map_err(|e: toml_edit::TomlError| syntax(path, e.to_string()))
}

/// Adds a peer (or appends new pins to an existing one).
pub fn add_peer(path: &Path, peer: &NewPeer) -> Result<AddOutcome, EditError> {
    edit_locked(path, |text| {
        let mut doc = parse_doc(path, text)?;
        if !doc.contains_key("peer") {
            doc.insert("peer", Item::ArrayOfTables(ArrayOfTables::new()));
        }
        let aot = doc
            .get_mut("peer")
            .and_then(|i| i.as_array_of_tables_mut())
            .ok_or_else(|| syntax(path, "`peer` must be an array of tables ([[peer]])".into()))?;
        let existing = aot.iter_mut().find(|t| {
            t.get("server_name")
                .and_then(|v| v.as_str())
                .is_some_and(|s| s.eq_ignore_ascii_case(&peer.server_name))
        });
        let outcome = match existing {
            Some(table) => AddOutcome::Extended(extend_table(path, table, peer)?),
            None => {
                aot.push(new_table(peer));
                AddOutcome::Added
            }
        };
        Ok((doc.to_string(), outcome))
    })
}

/// Merges `peer` into its existing table: new pins appended (comments and
/// order kept), the given options set. Returns how many pins were added.
fn extend_table(path: &Path, table: &mut Table, peer: &NewPeer) -> Result<usize, EditError> {
    let not = |what: &str| syntax(path, format!("peer \"{}\": {what}", peer.server_name));
    let pins = table
        .entry("pins")
        .or_insert(value(Array::new()))
        .as_array_mut()
        .ok_or_else(|| not("pins is not an array"))?;
    let mut added = merge_pins(pins, &peer.pins);
    one_per_line(pins);
    if let Some(t) = peer.trust {
        table["trust"] = value(t.to_string());
    }
    if let Some(m) = peer.mode {
        table["mode"] = value(m.to_string());
    }
    set_options(table, peer, None);
    if !peer.host_pins.is_empty() {
        let hp = table
            .entry("host_pins")
            .or_insert(Item::Table(Table::new()))
            .as_table_like_mut()
            .ok_or_else(|| not("host_pins is not a table"))?;
        for (h, list) in &peer.host_pins {
            let arr = hp
                .entry(h)
                .or_insert(value(Array::new()))
                .as_array_mut()
                .ok_or_else(|| not(&format!("host_pins.\"{h}\" is not an array")))?;
            added += merge_pins(arr, list);
        }
    }
    Ok(added)
}

/// Appends the pins `arr` lacks; returns how many.
fn merge_pins(arr: &mut Array, pins: &[crate::pins::Pin]) -> usize {
    let mut added = 0;
    for p in pins {
        let s = p.to_string();
        if !arr.iter().any(|v| v.as_str() == Some(s.as_str())) {
            arr.push(s);
            added += 1;
        }
    }
    added
}

/// Lays a list of two or more pins out one per line, so a diff of the
/// file shows which pin changed.
fn one_per_line(pins: &mut Array) {
    if pins.len() > 1 {
        for v in pins.iter_mut() {
            v.decor_mut().set_prefix("\n  ");
        }
        pins.set_trailing("\n");
        pins.set_trailing_comma(true);
    }
}

/// The optional keys a new or extended entry carries when given (`note`
/// only on a new entry: an existing entry keeps its own).
fn set_options(t: &mut Table, peer: &NewPeer, note: Option<&str>) {
    if let Some(e) = &peer.expires {
        t["expires"] = value(e.as_str());
    }
    if let Some(n) = note {
        t["note"] = value(n);
    }
    if let Some(d) = &peer.delegation {
        t["delegation"] = value(d.as_str());
    }
    if !peer.signing_keys.is_empty() {
        let arr: Array = peer.signing_keys.iter().map(|k| k.as_str()).collect();
        t["signing_keys"] = value(arr);
    }
}

fn new_table(peer: &NewPeer) -> Table {
    let mut t = Table::new();
    t.decor_mut().set_prefix("\n");
    t["server_name"] = value(peer.server_name.as_str());
    if let Some(hosts) = &peer.hosts {
        let arr: Array = hosts.iter().map(|h| h.as_str()).collect();
        t["hosts"] = value(arr);
    }
    let mut pins: Array = peer.pins.iter().map(|p| p.to_string()).collect();
    one_per_line(&mut pins);
    t["pins"] = value(pins);
    t["trust"] = value(peer.trust.unwrap_or(Trust::Webpki).to_string());
    t["mode"] = value(peer.mode.unwrap_or(Mode::Enforce).to_string());
    set_options(&mut t, peer, peer.note.as_deref());
    if !peer.host_pins.is_empty() {
        let mut hp = toml_edit::InlineTable::new();
        for (h, list) in &peer.host_pins {
            let arr: Array = list.iter().map(|p| p.to_string()).collect();
            hp.insert(h, toml_edit::Value::Array(arr));
        }
        t["host_pins"] = value(hp);
    }
    t
}

/// Removes the peer with this server name.
pub fn remove_peer(path: &Path, server_name: &str) -> Result<(), EditError> {
    edit_locked(path, |text| {
        let mut doc = parse_doc(path, text)?;
        let not_found = || EditError::NotFound {
            path: path.display().to_string(),
            server_name: server_name.to_string(),
        };
        let aot = doc
            .get_mut("peer")
            .and_then(|i| i.as_array_of_tables_mut())
            .ok_or_else(not_found)?;
        let idx = aot
            .iter()
            .position(|t| {
                t.get("server_name")
                    .and_then(|v| v.as_str())
                    .is_some_and(|s| s.eq_ignore_ascii_case(server_name))
            })
            .ok_or_else(not_found)?;
        aot.remove(idx);
        Ok((doc.to_string(), ()))
    })
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}

/// Runs `edit` on the file's text under an exclusive lock, validates the
/// result, and replaces the file atomically. A missing file starts from a
/// fresh template.
pub fn edit_locked<T>(
    path: &Path,
    edit: impl FnOnce(&str) -> Result<(String, T), EditError>,
) -> Result<T, EditError> {
    let lock_file = lock_path(path);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_file)
        .map_err(io(&lock_file, "cannot open the lock file"))?;
    lock.lock().map_err(io(&lock_file, "cannot lock"))?;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NEW_FILE.to_string(),
        Err(e) => return Err(io(path, "cannot read")(e)),
    };
    let (new_text, out) = edit(&text)?;
    PinSet::parse(&new_text).map_err(|mut e| {
        e.path = Some(path.display().to_string());
        EditError::Invalid(e)
    })?;
    write_atomic(path, new_text.as_bytes())?;
    drop(lock);
    Ok(out)
}

/// Test-only fault injection: when `FEDPIN_FAULT` names a step, the process
/// aborts there (to prove a killed write never leaves a partial file).
fn fault_point(step: &str) {
    if std::env::var("FEDPIN_FAULT").is_ok_and(|v| v == step) {
        std::process::abort();
    }
}

/// Test-only error injection: `FEDPIN_FAULT=<step>:enospc` (or `:erofs`)
/// makes that step fail with "no space left on device" (or "read-only file
/// system"), for machines where a test cannot mount a full or read-only
/// file system.
fn injected_error(step: &str) -> std::io::Result<()> {
    let Ok(v) = std::env::var("FEDPIN_FAULT") else {
        return Ok(());
    };
    let Some((at, what)) = v.split_once(':') else {
        return Ok(());
    };
    if at != step {
        return Ok(());
    }
    match what {
        "enospc" => Err(std::io::Error::from_raw_os_error(28)),
        "erofs" => Err(std::io::Error::from_raw_os_error(30)),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` atomically: temp file in the same directory,
/// fsync, rename over the target, fsync the directory. Keeps the old file's
/// permissions.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EditError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = injected_error("create")
        .and_then(|()| {
            tempfile::Builder::new()
                .prefix(".pins-")
                .suffix(".tmp")
                .tempfile_in(&dir)
        })
        .map_err(io(path, "cannot create a temporary file next to it"))?;
    fault_point("after-create");
    injected_error("write")
        .and_then(|()| tmp.write_all(bytes))
        .map_err(io(tmp.path(), "cannot write"))?;
    fault_point("after-write");
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file()
            .set_permissions(meta.permissions())
            .map_err(io(tmp.path(), "cannot set permissions"))?;
    }
    tmp.as_file().sync_all().map_err(io(path, "cannot fsync"))?;
    fault_point("after-fsync");
    tmp.persist(path).map_err(|e| EditError::Io {
        path: path.display().to_string(),
        action: "cannot rename the new file into place",
        source: e.error,
    })?;
    fault_point("after-rename");
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(n: u8) -> Pin {
        Pin::of_spki(&[n])
    }

    #[test]
    fn add_keeps_comments_and_extends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        std::fs::write(
            &path,
            "# top comment\nversion = 1\n\n[policy]\nunpinned = \"deny\" # keep me\n",
        )
        .unwrap();
        let p = NewPeer {
            server_name: "a.example".into(),
            hosts: None,
            pins: vec![pin(1), pin(2)],
            trust: None,
            mode: None,
            expires: None,
            note: Some("n".into()),
            delegation: None,
            host_pins: Vec::new(),
            signing_keys: Vec::new(),
        };
        assert_eq!(add_peer(&path, &p).unwrap(), AddOutcome::Added);
        let again = NewPeer {
            pins: vec![pin(2), pin(3)],
            ..p.clone()
        };
        assert_eq!(add_peer(&path, &again).unwrap(), AddOutcome::Extended(1));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# top comment"));
        assert!(text.contains("# keep me"));
        let set = PinSet::parse(&text).unwrap();
        assert_eq!(set.lookup("a.example").unwrap().pins.len(), 3);
        remove_peer(&path, "A.example").unwrap();
        let set = PinSet::load(&path).unwrap();
        assert!(set.is_empty());
        assert!(matches!(
            remove_peer(&path, "a.example"),
            Err(EditError::NotFound { .. })
        ));
    }

    #[test]
    fn invalid_result_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        let p = NewPeer {
            server_name: "a.example".into(),
            hosts: None,
            pins: vec![pin(1)],
            trust: None,
            mode: None,
            expires: None,
            note: None,
            delegation: None,
            host_pins: Vec::new(),
            signing_keys: Vec::new(),
        };
        add_peer(&path, &p).unwrap();
        let before = std::fs::read(&path).unwrap();
        let clash = NewPeer {
            server_name: "b.example".into(),
            hosts: Some(vec!["a.example".into()]),
            ..p
        };
        assert!(matches!(
            add_peer(&path, &clash),
            Err(EditError::Invalid(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
