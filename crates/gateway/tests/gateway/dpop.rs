//! DPoP at the gateway (RFC 9449 §7): a bound token works only with a fresh proof by its key for this exact
//! request. Proofs come from `tessera-testkit`, which signs with the `jsonwebtoken` crate.

use serde_json::json;
use tessera_testkit::{DpopClient, hmac_proof};
use tessera_token::{Algorithm, SigningKey};

use crate::harness::{Backend, Grant, Options, World, b64};

fn now() -> u64 {
    u64::try_from(tessera_server::now()).unwrap()
}

/// Sends GET `path` with `Authorization: <scheme> <token>` and an optional proof; returns the status and the
/// `WWW-Authenticate` challenges.
async fn send(
    w: &World,
    method: &str,
    path: &str,
    scheme: &str,
    token: &str,
    proof: Option<&str>,
) -> (u16, Vec<String>) {
    let client = reqwest::Client::new();
    let mut request = client
        .request(method.parse().unwrap(), w.url(path))
        .header("authorization", format!("{scheme} {token}"));
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    let r = request.send().await.unwrap();
    let challenges =
        r.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    (r.status().as_u16(), challenges)
}

#[tokio::test]
async fn dpop_bound_token_is_useless_without_a_fresh_proof_by_its_key() {
    let w = World::start(Backend::Sqlite).await.unwrap();
    let key = DpopClient::new("ES256").unwrap();
    let (token, _) = w.token(Grant { jkt: Some(key.thumbprint().unwrap()), ..Grant::default() });
    let url = w.url("/orders/7");

    // The owner, properly: through, and neither the proof nor the token reaches the upstream.
    let proof = key.proof("GET", &url, now(), Some(&token), None).unwrap();
    assert_eq!(send(&w, "GET", "/orders/7?page=2", "DPoP", &token, Some(&proof)).await.0, 200);
    let seen = w.upstream.last();
    assert!(seen.header("dpop").is_none() && seen.header("authorization").is_none());
    assert_eq!(seen.header("x-tessera-sub"), Some("u_alice"));
    let passed = w.upstream.count();

    // A copy of the token alone, as a bearer token: refused, and the answer offers DPoP.
    let (status, challenges) = send(&w, "GET", "/orders/7", "Bearer", &token, None).await;
    assert_eq!(status, 401);
    assert!(challenges.iter().any(|c| c.starts_with("DPoP ") && c.contains("algs=")), "{challenges:?}");
    // The DPoP scheme with no proof, or with the thief's own key.
    assert_eq!(send(&w, "GET", "/orders/7", "DPoP", &token, None).await.0, 401);
    let thief = DpopClient::new("ES256").unwrap();
    let stolen = thief.proof("GET", &url, now(), Some(&token), None).unwrap();
    let (status, challenges) = send(&w, "GET", "/orders/7", "DPoP", &token, Some(&stolen)).await;
    assert_eq!(status, 401);
    assert!(challenges.iter().any(|c| c.contains("error=\"invalid_dpop_proof\"")), "{challenges:?}");

    // The owner's key, but not a proof for this request.
    let refused = [
        ("replayed", proof.clone()),
        ("another method", key.proof("POST", &url, now(), Some(&token), None).unwrap()),
        ("another URL", key.proof("GET", &w.url("/orders/8"), now(), Some(&token), None).unwrap()),
        ("another host", key.proof("GET", "https://orders.example/orders/7", now(), Some(&token), None).unwrap()),
        ("another token", key.proof("GET", &url, now(), Some("other.token.value"), None).unwrap()),
        ("no ath", key.proof("GET", &url, now(), None, None).unwrap()),
        ("expired", key.proof("GET", &url, now() - 600, Some(&token), None).unwrap()),
        ("from the future", key.proof("GET", &url, now() + 600, Some(&token), None).unwrap()),
        (
            "HMAC",
            hmac_proof(&json!({"jti": "h", "htm": "GET", "htu": url, "iat": now(), "ath": tessera_testkit::ath(&token)}))
                .unwrap(),
        ),
    ];
    for (what, bad) in refused {
        assert_eq!(send(&w, "GET", "/orders/7", "DPoP", &token, Some(&bad)).await.0, 401, "{what}");
    }
    // alg none, and a jwk with the private key in it.
    let claims =
        json!({"jti": "n", "htm": "GET", "htu": url, "iat": now(), "ath": tessera_testkit::ath(&token)});
    let header = json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.public_jwk().unwrap()});
    let none = format!("{}.{}.", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    assert_eq!(send(&w, "GET", "/orders/7", "DPoP", &token, Some(&none)).await.0, 401, "alg none");
    let signer = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let private: serde_json::Value = serde_json::from_str(&signer.to_private_jwk().unwrap()).unwrap();
    let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": private});
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let leaky = format!("{input}.{}", b64(&signer.sign(input.as_bytes()).unwrap()));
    assert_eq!(send(&w, "GET", "/orders/7", "DPoP", &token, Some(&leaky)).await.0, 401, "private jwk");
    assert_eq!(w.upstream.count(), passed, "no refused request reached the upstream");

    let metrics = reqwest::get(w.url("/metrics")).await.unwrap().text().await.unwrap();
    for reason in [
        "dpop_bound_token_as_bearer",
        "dpop_missing_proof",
        "dpop_key_mismatch",
        "dpop_replayed",
        "dpop_url_mismatch",
        "dpop_method_mismatch",
        "dpop_too_old",
    ] {
        assert!(metrics.contains(&format!("reason=\"{reason}\"")), "{reason} counted: {metrics}");
    }
    w.finish().await;
}

#[tokio::test]
async fn dpop_scheme_with_an_unbound_token_is_refused() {
    let w = World::start(Backend::Sqlite).await.unwrap();
    let (token, _) = w.token(Grant::default());
    let key = DpopClient::new("EdDSA").unwrap();
    let proof = key.proof("GET", &w.url("/orders/1"), now(), Some(&token), None).unwrap();
    assert_eq!(send(&w, "GET", "/orders/1", "DPoP", &token, Some(&proof)).await.0, 401);
    // The same token as what it is, a bearer token, passes.
    assert_eq!(send(&w, "GET", "/orders/1", "Bearer", &token, None).await.0, 200);
    w.finish().await;
}

#[tokio::test]
async fn a_guard_asking_for_nonces_refuses_a_proof_made_in_advance() {
    let options = Options { dpop_nonce: true, ..Options::default() };
    let w = World::start_with(Backend::Sqlite, options).await.unwrap();
    let key = DpopClient::new("EdDSA").unwrap();
    let (token, _) = w.token(Grant { jkt: Some(key.thumbprint().unwrap()), ..Grant::default() });
    let url = w.url("/orders/7");
    let http = reqwest::Client::new();
    let ask = |proof: String| {
        http.get(&url).header("authorization", format!("DPoP {token}")).header("dpop", proof).send()
    };
    // A proof made without a nonce (in advance, say): refused, and told which nonce to use.
    let first = ask(key.proof("GET", &url, now(), Some(&token), None).unwrap()).await.unwrap();
    assert_eq!(first.status(), 401);
    let challenges: Vec<&str> =
        first.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("DPoP ") && c.contains("error=\"use_dpop_nonce\"")),
        "{challenges:?}"
    );
    let nonce = first.headers()["dpop-nonce"].to_str().unwrap().to_owned();
    assert_eq!(w.upstream.count(), 0, "nothing reached the upstream");
    // A made-up nonce is refused the same way.
    let forged = ask(key.proof("GET", &url, now(), Some(&token), Some("made-up")).unwrap()).await.unwrap();
    assert_eq!(forged.status(), 401);
    assert_eq!(forged.headers()["dpop-nonce"].to_str().unwrap(), nonce);
    // Signed again with the nonce: through, and the answer carries the nonce to use next.
    let proof = key.proof("GET", &url, now(), Some(&token), Some(&nonce)).unwrap();
    let second = ask(proof.clone()).await.unwrap();
    assert_eq!(second.status(), 200);
    assert!(second.headers().contains_key("dpop-nonce"));
    assert_eq!(w.upstream.count(), 1);
    // A nonce is not a pass: the same proof again is still a replay.
    let again = ask(proof).await.unwrap();
    assert_eq!(again.status(), 401);
    let challenges: Vec<&str> =
        again.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(challenges.iter().any(|c| c.contains("error=\"invalid_dpop_proof\"")), "{challenges:?}");
    let metrics = reqwest::get(w.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reason=\"dpop_nonce_required\""), "{metrics}");
    w.finish().await;
}
