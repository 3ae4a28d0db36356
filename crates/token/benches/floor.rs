//! How far claims parsing is from serde_json's floor on the same payload: scanning only (`IgnoredAny`), a
//! generic `Value`, our `AccessClaims` through the generic `Deserialize` (a string allocated per claim), and
//! through `VerifiedJwt::validate` (the same, plus the policy and time checks).
//!
//! `cargo bench -p tessera-token --bench floor`

#![allow(clippy::unwrap_used, reason = "benchmark set-up fails loudly")]

mod common;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tessera_token::{AccessClaims, Algorithm, b64};

fn benches(c: &mut Criterion) {
    let f = common::Fixture::new(Algorithm::EdDSA);
    let segment = f.token.split('.').nth(1).unwrap().to_owned();
    let text = String::from_utf8(b64::decode(&segment).unwrap()).unwrap();
    c.bench_function("floor/base64_payload", |b| b.iter(|| b64::decode(black_box(&segment)).unwrap()));
    c.bench_function("floor/json_scan_only", |b| {
        b.iter(|| serde_json::from_str::<serde::de::IgnoredAny>(black_box(&text)).unwrap());
    });
    c.bench_function("floor/json_value", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(&text)).unwrap());
    });
    c.bench_function("floor/access_claims_allocating", |b| {
        b.iter(|| serde_json::from_str::<AccessClaims>(black_box(&text)).unwrap());
    });
    let verified = tessera_token::UnverifiedJwt::parse(&f.token).unwrap().verify(&f.keys).unwrap();
    c.bench_function("floor/access_claims_validate", |b| {
        b.iter(|| black_box(&verified).validate(&f.policy, tessera_token::UnixTime(common::NOW)).unwrap());
    });
}

criterion_group!(floor, benches);
criterion_main!(floor);
