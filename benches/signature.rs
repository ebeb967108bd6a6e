//! What verifying an X-Matrix request signature costs at the edge.
//!
//! Run with `cargo bench --bench signature`. One group, `request_1kib`: a
//! `PUT /_matrix/federation/v1/send/…` whose body is a 1 KiB transaction.
//!
//! * `serde_json_parse` (baseline): parsing the body with serde_json, the
//!   least any JSON-aware edge would do;
//! * `canonical_json`: fedpin's exact parser and canonical encoding of the
//!   signed object (method, uri, origin, destination, content);
//! * `verify`: the whole check the edge runs per request with a cached or
//!   pinned key: canonical JSON plus the ed25519 verification (ring, with
//!   libsodium's small-order checks).
//!
//! The ratio `verify / serde_json_parse` and the absolute `verify` time (the
//! issue's target: under 60 µs CPU per request) are the figures to read.

use std::hint::black_box;

use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fedpin::matrix::signing::{SignedRequest, VerifyKey};
use ring::signature::KeyPair as _;

fn body_1kib() -> Vec<u8> {
    let mut pdus = Vec::new();
    let mut i = 0;
    loop {
        pdus.push(serde_json::json!({
            "type": "m.room.message",
            "room_id": "!abcdefghijklmnop:origin.example",
            "sender": "@alice:origin.example",
            "origin_server_ts": 1_700_000_000_000u64 + i,
            "content": { "msgtype": "m.text", "body": format!("message number {i}") },
            "depth": 10 + i,
        }));
        let body = serde_json::to_vec(&serde_json::json!({
            "origin": "origin.example",
            "origin_server_ts": 1_700_000_000_000u64,
            "pdus": pdus,
            "edus": [],
        }))
        .unwrap();
        if body.len() >= 1024 {
            return body;
        }
        i += 1;
    }
}

fn bench(c: &mut Criterion) {
    let body = body_1kib();
    let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[3; 32]).unwrap();
    let key = VerifyKey::from_base64(
        "ed25519:k",
        &base64::engine::general_purpose::STANDARD_NO_PAD.encode(kp.public_key().as_ref()),
    )
    .unwrap();
    let req = SignedRequest {
        method: "PUT",
        uri: "/_matrix/federation/v1/send/1700000000000",
        origin: "origin.example",
        destination: "hs.example",
        body: &body,
    };
    let sig = base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(kp.sign(&req.signed_bytes().unwrap()).as_ref());
    req.verify(&key, &sig).unwrap();

    let mut g = c.benchmark_group("request_1kib");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("serde_json_parse", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap())
    });
    g.bench_function("canonical_json", |b| {
        b.iter(|| black_box(&req).signed_bytes().unwrap())
    });
    g.bench_function("verify", |b| {
        b.iter(|| black_box(&req).verify(&key, black_box(&sig)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
