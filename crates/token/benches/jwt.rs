//! Hot paths of the token crate against the raw crypto they wrap, per algorithm, on a typical ~750-byte
//! access token:
//!
//! - `validate/ALG`: parse + verify + validate claims (`validate_access_token`), and its parts `parse/ALG`
//!   and `claims/ALG`;
//! - `raw_verify/ALG`: aws-lc-rs verifying the same signature over the same bytes with a pre-parsed key
//!   (`ParsedPublicKey`, what `validate` uses), and `raw_verify_unparsed/ALG` with the key parsed per call
//!   (`UnparsedPublicKey`, what most JWT libraries do);
//! - `issue/ALG`: serialize + encode + sign (`SigningKey::sign_jwt`);
//! - `raw_sign/ALG`: aws-lc-rs signing the same signing input;
//! - `dpop/…`: a DPoP proof checked in full, with its key kept, and its bare signature check.
//!
//! `cargo bench -p tessera-token --bench jwt`. For noise-resistant ratios see `benches/ratio.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "benchmark set-up fails loudly and reports the token size"
)]

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tessera_token::dpop::{
    Ath, NewProof, ProofKey, ProofPolicy, ProofRequest, proof_header, verify_proof, verify_proof_with_key,
};
use tessera_token::{Algorithm, UnixTime, UnverifiedJwt, validate_access_token};

use common::{Fixture, NOW};

fn benches(c: &mut Criterion) {
    for alg in Algorithm::ALL {
        let f = Fixture::new(alg);
        eprintln!("{alg}: token is {} bytes", f.token.len());
        c.bench_function(&format!("validate/{alg}"), |b| {
            b.iter(|| validate_access_token(black_box(&f.token), &f.keys, &f.policy, UnixTime(NOW)).unwrap());
        });
        c.bench_function(&format!("parse/{alg}"), |b| {
            b.iter(|| UnverifiedJwt::parse(black_box(&f.token)).unwrap());
        });
        let verified = UnverifiedJwt::parse(&f.token).unwrap().verify(&f.keys).unwrap();
        c.bench_function(&format!("claims/{alg}"), |b| {
            b.iter(|| black_box(&verified).validate(&f.policy, UnixTime(NOW)).unwrap());
        });
        c.bench_function(&format!("raw_verify/{alg}"), |b| {
            b.iter(|| f.parsed.verify_sig(black_box(f.input.as_bytes()), black_box(&f.sig)).unwrap());
        });
        c.bench_function(&format!("raw_verify_unparsed/{alg}"), |b| {
            b.iter(|| f.unparsed.verify(black_box(f.input.as_bytes()), black_box(&f.sig)).unwrap());
        });
        c.bench_function(&format!("issue/{alg}"), |b| {
            b.iter(|| f.key.sign_jwt("at+jwt", black_box(&f.claims)).unwrap());
        });
        c.bench_function(&format!("raw_sign/{alg}"), |b| {
            b.iter(|| f.signer.sign(black_box(f.input.as_bytes())));
        });
    }
    dpop(c);
}

/// A DPoP proof accompanying an access token, as a guard checks it: in full (`dpop/verify`), with its header
/// already parsed and kept (`dpop/verify_with_key`, what the guard does after the first proof of a key), and
/// the bare signature check it contains (`dpop/raw_verify`).
fn dpop(c: &mut Criterion) {
    let key = tessera_token::SigningKey::generate(Algorithm::EdDSA).unwrap();
    let token = Fixture::new(Algorithm::EdDSA).token;
    let url = "https://api.example/orders/42";
    let new =
        NewProof { method: "GET", url, jti: "bench-1", iat: NOW, access_token: Some(&token), nonce: None };
    let proof = key.sign_dpop_proof(&new).unwrap();
    let request = ProofRequest { method: "GET", url, access_token: Some(Ath::of(&token)), nonces: &[] };
    let policy = ProofPolicy::default();
    c.bench_function("dpop/verify/EdDSA", |b| {
        b.iter(|| verify_proof(black_box(&proof), &request, &policy, UnixTime(NOW)).unwrap());
    });
    let kept = ProofKey::parse(proof_header(&proof).unwrap()).unwrap();
    c.bench_function("dpop/verify_with_key/EdDSA", |b| {
        b.iter(|| verify_proof_with_key(black_box(&proof), &kept, &request, &policy, UnixTime(NOW)).unwrap());
    });
    let (input, sig) = proof.rsplit_once('.').unwrap();
    let sig = tessera_token::b64::decode(sig).unwrap();
    let verifying = key.verifying_key().clone();
    c.bench_function("dpop/raw_verify/EdDSA", |b| {
        b.iter(|| verifying.verify(black_box(input.as_bytes()), black_box(&sig)).unwrap());
    });
}

criterion_group! {
    name = jwt;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = benches
}
criterion_main!(jwt);
