//! Paired ratios: our path against the raw aws-lc-rs operation on the same bytes, measured in alternating
//! short batches in one process, so that the machine's drift (frequency, neighbours) hits both sides alike.
//! Prints the median of the per-round ratios and the median per-operation times, and where validation's
//! overhead goes in situ: the raw verify plus only the parse, and plus only the claims validation.
//!
//! `cargo bench -p tessera-token --bench ratio` (add `-- quick` for a shorter run).

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a benchmark prints its results")]

mod common;

use std::hint::black_box;
use std::time::Instant;

use tessera_token::{Algorithm, UnixTime, UnverifiedJwt, validate_access_token};

use common::{Fixture, NOW};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `iters` calls of `f`, in nanoseconds per call.
#[allow(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
fn batch(iters: u32, f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iters)
}

/// Alternates batches of `ours` and `raw` for `rounds` rounds; returns (median ratio, ours ns, raw ns).
fn paired(rounds: usize, ours: &mut dyn FnMut(), raw: &mut dyn FnMut()) -> (f64, f64, f64) {
    // Size batches to about 2 ms of work.
    let probe = batch(10, raw);
    let iters = ((2_000_000.0 / probe) as u32).clamp(1, 10_000);
    batch(iters, ours);
    batch(iters, raw);
    let (mut ratios, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = batch(iters, ours);
            (x, batch(iters, raw))
        } else {
            let y = batch(iters, raw);
            (batch(iters, ours), y)
        };
        ratios.push(x / y);
        a.push(x);
        b.push(y);
    }
    (median(&mut ratios), median(&mut a), median(&mut b))
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let rounds = if quick { 40 } else { 400 };
    println!(
        "| alg | validate | raw verify | validate / raw verify | (parse + raw) / raw | (claims + raw) / raw | issue | raw sign | issue / raw sign |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for alg in Algorithm::ALL {
        let f = Fixture::new(alg);
        let (vr, v, rv) = paired(
            rounds,
            &mut || {
                black_box(
                    validate_access_token(black_box(&f.token), &f.keys, &f.policy, UnixTime(NOW)).unwrap(),
                );
            },
            &mut || f.parsed.verify_sig(black_box(f.input.as_bytes()), black_box(&f.sig)).unwrap(),
        );
        let raw_verify = || f.parsed.verify_sig(black_box(f.input.as_bytes()), black_box(&f.sig)).unwrap();
        let (pr, _, _) = paired(
            rounds,
            &mut || {
                black_box(UnverifiedJwt::parse(black_box(&f.token)).unwrap());
                raw_verify();
            },
            &mut || raw_verify(),
        );
        let verified = UnverifiedJwt::parse(&f.token).unwrap().verify(&f.keys).unwrap();
        let (cr, _, _) = paired(
            rounds,
            &mut || {
                black_box(black_box(&verified).validate(&f.policy, UnixTime(NOW)).unwrap());
                raw_verify();
            },
            &mut || raw_verify(),
        );
        let (ir, i, rs) = paired(
            rounds,
            &mut || {
                black_box(f.key.sign_jwt("at+jwt", black_box(&f.claims)).unwrap());
            },
            &mut || {
                black_box(f.signer.sign(black_box(f.input.as_bytes())));
            },
        );
        let us = |ns: f64| format!("{:.2} µs", ns / 1000.0);
        println!(
            "| {alg} | {} | {} | {vr:.3}x | {pr:.3}x | {cr:.3}x | {} | {} | {ir:.3}x |",
            us(v),
            us(rv),
            us(i),
            us(rs)
        );
    }
}
