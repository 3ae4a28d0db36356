//! RFC 9068 access-token claims, with room for Tessera's own (`sid`, `roles`, `cnf`, `act`) and any others.
//!
//! Deserialization is hand-written so that a repeated claim is refused at every depth without first building
//! a generic JSON tree, and so that a missing required claim is reported by name. Serialization refuses an
//! extra claim that would shadow a registered one.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, SerializeMap, Serializer};
use serde::{Serialize, de::Error as _};
use serde_json::{Map, Value};

use crate::error::Rejection;
use crate::json::{self, StrictValue, set_once};

/// The `aud` claim: one audience or several. Tessera issues exactly one (RFC 8707 resource indicators).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience(pub Vec<String>);

impl Audience {
    /// A single audience.
    #[must_use]
    pub fn one(aud: impl Into<String>) -> Self {
        Self(vec![aud.into()])
    }

    /// Whether `aud` is one of the audiences.
    #[must_use]
    pub fn contains(&self, aud: &str) -> bool {
        self.0.iter().any(|a| a == aud)
    }
}

impl Serialize for Audience {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Audience;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Audience, E> {
                Ok(Audience::one(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Audience, A::Error> {
                let mut out = Vec::new();
                while let Some(a) = seq.next_element::<String>()? {
                    out.push(a);
                }
                Ok(Audience(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The `cnf` claim (RFC 7800): the key a sender-constrained token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub struct Confirmation {
    /// The RFC 7638 thumbprint of the DPoP key (RFC 9449).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// Other confirmation methods, kept as they came.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The `act` claim (RFC 8693 §4.1): who is acting on the subject's behalf, possibly nested.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub struct Actor {
    /// The acting party's subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The acting client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The actor before this one in the delegation chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
    /// Other members, kept as they came.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// One token in an `origin` chain: a token this one was exchanged from (RFC 8693), with what a revocation
/// of it can match. Revoking that token, its client or its signing key revokes every token exchanged from
/// it, at the server and at every guard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// The earlier token's `jti`.
    pub jti: String,
    /// The client it was issued to.
    pub client_id: String,
    /// Its `iat`, compared with a client revocation's not-before time.
    pub iat: u64,
    /// The `kid` of the key that signed it.
    pub kid: String,
}

/// Validated access-token claims (RFC 9068 §2.2, plus Tessera's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject: the user, or the client for `client_credentials`.
    pub sub: String,
    /// Audience: the resource server this token is for.
    pub aud: Audience,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Not before, seconds since the epoch.
    pub nbf: Option<u64>,
    /// Unique token id.
    pub jti: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Space-separated scopes.
    pub scope: Option<String>,
    /// Session (refresh family) id; absent for `client_credentials`.
    pub sid: Option<String>,
    /// Roles granted to the subject.
    pub roles: Vec<String>,
    /// When the user authenticated, seconds since the epoch.
    pub auth_time: Option<u64>,
    /// Authentication methods (RFC 8176).
    pub amr: Vec<String>,
    /// Authentication context class.
    pub acr: Option<String>,
    /// Confirmation (DPoP key binding).
    pub cnf: Option<Confirmation>,
    /// Actor chain after token exchange.
    pub act: Option<Actor>,
    /// The tokens this one was exchanged from, the original first (empty for a token not from an exchange).
    pub origin: Vec<Origin>,
    /// Any other claims.
    pub extra: Map<String, Value>,
}

impl AccessClaims {
    /// The scopes, split on spaces.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.as_deref().unwrap_or("").split(' ').filter(|s| !s.is_empty())
    }

    /// Whether `scope` was granted.
    #[must_use]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }
}

impl AccessClaims {
    /// The registered and Tessera claim names this type reads into typed fields; `extra` may not repeat them.
    pub const REGISTERED: [&'static str; 17] = [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "client_id",
        "scope",
        "sid",
        "roles",
        "auth_time",
        "amr",
        "acr",
        "cnf",
        "act",
        "origin",
    ];
}

impl Serialize for AccessClaims {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(name) = self.extra.keys().find(|k| Self::REGISTERED.contains(&k.as_str())) {
            return Err(ser::Error::custom(format_args!("extra claim {name} shadows a registered claim")));
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("iss", &self.iss)?;
        m.serialize_entry("sub", &self.sub)?;
        m.serialize_entry("aud", &self.aud)?;
        m.serialize_entry("exp", &self.exp)?;
        m.serialize_entry("iat", &self.iat)?;
        if let Some(nbf) = self.nbf {
            m.serialize_entry("nbf", &nbf)?;
        }
        m.serialize_entry("jti", &self.jti)?;
        m.serialize_entry("client_id", &self.client_id)?;
        if let Some(v) = &self.scope {
            m.serialize_entry("scope", v)?;
        }
        if let Some(v) = &self.sid {
            m.serialize_entry("sid", v)?;
        }
        if !self.roles.is_empty() {
            m.serialize_entry("roles", &self.roles)?;
        }
        if let Some(v) = self.auth_time {
            m.serialize_entry("auth_time", &v)?;
        }
        if !self.amr.is_empty() {
            m.serialize_entry("amr", &self.amr)?;
        }
        if let Some(v) = &self.acr {
            m.serialize_entry("acr", v)?;
        }
        if let Some(v) = &self.cnf {
            m.serialize_entry("cnf", v)?;
        }
        if let Some(v) = &self.act {
            m.serialize_entry("act", v)?;
        }
        if !self.origin.is_empty() {
            m.serialize_entry("origin", &self.origin)?;
        }
        for (k, v) in &self.extra {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// The outcome of reading a claims object: malformed JSON is an `Err` of the deserializer; a well-formed
/// object that lacks a required claim is `Ok(Err(MissingClaim))`.
pub(crate) struct ParsedClaims(pub(crate) Result<AccessClaims, Rejection>);

impl ParsedClaims {
    /// Parses claims JSON: duplicates refused, types checked, required claims present.
    pub(crate) fn from_slice(bytes: &[u8]) -> Result<AccessClaims, Rejection> {
        json::parse_segment::<Self>(bytes, Rejection::InvalidClaims)?.0
    }
}

impl<'de> Deserialize<'de> for AccessClaims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ParsedClaims(outcome) = ParsedClaims::deserialize(d)?;
        outcome.map_err(D::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ParsedClaims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ClaimsVisitor)
    }
}

enum Field {
    Iss,
    Sub,
    Aud,
    Exp,
    Iat,
    Nbf,
    Jti,
    ClientId,
    Scope,
    Sid,
    Roles,
    AuthTime,
    Amr,
    Acr,
    Cnf,
    Act,
    Origin,
    Other(String),
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "iss" => Field::Iss,
                    "sub" => Field::Sub,
                    "aud" => Field::Aud,
                    "exp" => Field::Exp,
                    "iat" => Field::Iat,
                    "nbf" => Field::Nbf,
                    "jti" => Field::Jti,
                    "client_id" => Field::ClientId,
                    "scope" => Field::Scope,
                    "sid" => Field::Sid,
                    "roles" => Field::Roles,
                    "auth_time" => Field::AuthTime,
                    "amr" => Field::Amr,
                    "acr" => Field::Acr,
                    "cnf" => Field::Cnf,
                    "act" => Field::Act,
                    "origin" => Field::Origin,
                    other => Field::Other(other.to_owned()),
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

struct ClaimsVisitor;

/// Reads a nested object strictly (no duplicates at any depth), then as `T`.
fn strict_object<'de, A: MapAccess<'de>, T: de::DeserializeOwned>(map: &mut A) -> Result<T, A::Error> {
    let StrictValue(v) = map.next_value()?;
    if !v.is_object() {
        return Err(A::Error::custom("expected an object"));
    }
    serde_json::from_value(v).map_err(A::Error::custom)
}

/// Reads a nested value strictly (no duplicates at any depth), then as `T`.
fn strict_value<'de, A: MapAccess<'de>, T: de::DeserializeOwned>(map: &mut A) -> Result<T, A::Error> {
    let StrictValue(v) = map.next_value()?;
    serde_json::from_value(v).map_err(A::Error::custom)
}

impl<'de> Visitor<'de> for ClaimsVisitor {
    type Value = ParsedClaims;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JWT claims object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ParsedClaims, A::Error> {
        let (mut iss, mut sub, mut aud, mut exp, mut iat, mut nbf, mut jti, mut client_id) =
            (None, None, None, None, None, None, None, None);
        let (mut scope, mut sid, mut roles, mut auth_time, mut amr, mut acr, mut cnf, mut act) =
            (None, None, None, None, None, None, None, None);
        let mut origin = None;
        let mut extra = Map::new();
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Iss => set_once(&mut iss, map.next_value::<String>()?, "iss")?,
                Field::Sub => set_once(&mut sub, map.next_value::<String>()?, "sub")?,
                Field::Aud => set_once(&mut aud, map.next_value::<Audience>()?, "aud")?,
                Field::Exp => set_once(&mut exp, map.next_value::<u64>()?, "exp")?,
                Field::Iat => set_once(&mut iat, map.next_value::<u64>()?, "iat")?,
                Field::Nbf => set_once(&mut nbf, map.next_value::<u64>()?, "nbf")?,
                Field::Jti => set_once(&mut jti, map.next_value::<String>()?, "jti")?,
                Field::ClientId => {
                    set_once(&mut client_id, map.next_value::<String>()?, "client_id")?;
                }
                Field::Scope => set_once(&mut scope, map.next_value::<String>()?, "scope")?,
                Field::Sid => set_once(&mut sid, map.next_value::<String>()?, "sid")?,
                Field::Roles => set_once(&mut roles, map.next_value::<Vec<String>>()?, "roles")?,
                Field::AuthTime => set_once(&mut auth_time, map.next_value::<u64>()?, "auth_time")?,
                Field::Amr => set_once(&mut amr, map.next_value::<Vec<String>>()?, "amr")?,
                Field::Acr => set_once(&mut acr, map.next_value::<String>()?, "acr")?,
                Field::Cnf => set_once(&mut cnf, strict_object::<A, Confirmation>(&mut map)?, "cnf")?,
                Field::Act => set_once(&mut act, strict_object::<A, Actor>(&mut map)?, "act")?,
                Field::Origin => {
                    set_once(&mut origin, strict_value::<A, Vec<Origin>>(&mut map)?, "origin")?;
                }
                Field::Other(name) => {
                    if extra.contains_key(&name) {
                        return Err(json::duplicate(&name));
                    }
                    let StrictValue(v) = map.next_value()?;
                    extra.insert(name, v);
                }
            }
        }
        macro_rules! required {
            ($($name:ident),*) => {
                $(let Some($name) = $name else {
                    return Ok(ParsedClaims(Err(Rejection::MissingClaim(stringify!($name)))));
                };)*
            };
        }
        required!(iss, sub, aud, exp, iat, jti, client_id);
        Ok(ParsedClaims(Ok(AccessClaims {
            iss,
            sub,
            aud,
            exp,
            iat,
            nbf,
            jti,
            client_id,
            scope,
            sid,
            roles: roles.unwrap_or_default(),
            auth_time,
            amr: amr.unwrap_or_default(),
            acr,
            cnf,
            act,
            origin: origin.unwrap_or_default(),
            extra,
        })))
    }
}
