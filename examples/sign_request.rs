//! Signs one federation request the way a homeserver does, for load
//! measurements with signature verification on
//! (`tests/load/inbound_vs_nginx.sh`): prints the pin-file `signing_keys`
//! entry of the origin on the first line and the `Authorization: X-Matrix`
//! header value on the second.
//!
//! Usage: `sign_request ORIGIN DESTINATION METHOD URI [SEED_BYTE]` (a body
//! is not supported: the load script measures GETs). The key is derived from
//! the seed byte, so it is a test key, never a real one.

use base64::Engine as _;
use fedpin::matrix::signing::SignedRequest;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 || args.len() > 5 {
        eprintln!("usage: sign_request ORIGIN DESTINATION METHOD URI [SEED_BYTE]");
        std::process::exit(64);
    }
    let seed: u8 = match args.get(4).map(|s| s.parse()) {
        None => 7,
        Some(Ok(s)) => s,
        Some(Err(_)) => {
            eprintln!("sign_request: SEED_BYTE must be 0-255, got {:?}", args[4]);
            std::process::exit(64);
        }
    };
    let kp = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("a 32-byte seed");
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD_NO_PAD.encode(b);
    let req = SignedRequest {
        method: &args[2],
        uri: &args[3],
        origin: &args[0],
        destination: &args[1],
        body: b"",
    };
    let signed = match req.signed_bytes() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sign_request: {e}");
            std::process::exit(65);
        }
    };
    println!("ed25519:load={}", b64(kp.public_key().as_ref()));
    println!(
        r#"X-Matrix origin="{}",destination="{}",key="ed25519:load",sig="{}""#,
        args[0],
        args[1],
        b64(kp.sign(&signed).as_ref())
    );
}
