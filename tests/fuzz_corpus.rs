//! Replays every committed fuzz corpus and regression input through the same
//! property checks the fuzz targets run (`fedpin::fuzzing`), so a crash found
//! once stays fixed without the fuzzer.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_file() {
                let data = std::fs::read(&path).unwrap();
                let r = std::panic::catch_unwind(|| check(&data));
                assert!(
                    r.is_ok(),
                    "{target}: {} violates a property",
                    path.display()
                );
                n += 1;
            }
        }
    }
    assert!(n > 0, "{target}: no corpus committed");
}

#[test]
fn corpus_pin_string() {
    replay("pin_string", fedpin::fuzzing::pin_string);
}

#[test]
fn corpus_pin_file() {
    replay("pin_file", fedpin::fuzzing::pin_file);
}

#[test]
fn corpus_config_file() {
    replay("config_file", fedpin::fuzzing::config_file);
}

#[test]
fn corpus_server_name() {
    replay("server_name", fedpin::fuzzing::server_name);
}

#[test]
fn corpus_der_chain() {
    replay("der_chain", fedpin::fuzzing::der_chain);
}

#[test]
fn corpus_connect_head() {
    replay("connect_head", fedpin::fuzzing::connect_head);
}

#[test]
fn corpus_xmatrix() {
    replay("xmatrix", fedpin::fuzzing::xmatrix);
}

#[test]
fn corpus_well_known() {
    replay("well_known", fedpin::fuzzing::well_known);
}

#[test]
fn corpus_srv() {
    replay("srv", fedpin::fuzzing::srv);
}

#[test]
fn corpus_access_log() {
    replay("access_log", fedpin::fuzzing::access_log);
}

#[test]
fn corpus_canonical_json() {
    replay("canonical_json", fedpin::fuzzing::canonical_json);
}

#[test]
fn corpus_key_response() {
    replay("key_response", fedpin::fuzzing::key_response);
}

#[test]
fn corpus_well_known_redirect() {
    replay("well_known_redirect", fedpin::fuzzing::well_known_redirect);
}
