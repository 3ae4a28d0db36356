//! The words the server, the store and the CLI share: grant types, client kinds, key states, revocation
//! subjects. Each has one stable lowercase spelling used on the wire, in the database and on the command line.

use std::fmt;
use std::str::FromStr;

/// Declares a closed string enum with one spelling per variant.
macro_rules! spelled {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s { $($text => Ok($name::$variant),)+ _ => Err(UnknownName(stringify!($name))) }
            }
        }
    };
}

/// A spelling that names no variant; carries the type's name, never the input (it may be anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownName(pub &'static str);

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a known {}", self.0)
    }
}

impl std::error::Error for UnknownName {}

spelled! {
    /// An OAuth grant a client may be allowed to use.
    GrantType {
        /// RFC 6749 §4.1 with PKCE (OAuth 2.1).
        AuthorizationCode = "authorization_code",
        /// RFC 6749 §6, rotated on every use.
        RefreshToken = "refresh_token",
        /// RFC 6749 §4.4, confidential clients only.
        ClientCredentials = "client_credentials",
        /// RFC 8693 token exchange: a service trades a token it received for a narrower one to call the next
        /// service, within the per-client exchange policy.
        TokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange",
    }
}

spelled! {
    /// Whether a client can keep a secret (RFC 6749 §2.1).
    ClientKind {
        /// A browser or native app: no secret, PKCE only.
        Public = "public",
        /// A server-side client with a generated secret.
        Confidential = "confidential",
    }
}

spelled! {
    /// A signing key's place in its lifecycle (DESIGN §3).
    KeyState {
        /// Published in the JWKS, not yet signing.
        Next = "next",
        /// Signing; exactly one key is current.
        Current = "current",
        /// Published until the last token it signed has expired; no longer signing.
        Retired = "retired",
        /// Withdrawn at once (emergency rotation): not published, and revoked at every guard.
        Revoked = "revoked",
    }
}

spelled! {
    /// What a revocation entry matches (DESIGN §4).
    RevocationKind {
        /// One access token, by `jti`.
        Token = "token",
        /// Every token of one session (refresh family), by `sid`.
        Session = "session",
        /// Every token of one user issued before `not_before`, by `sub`.
        User = "user",
        /// Every token of one client issued before `not_before`, by `client_id`.
        Client = "client",
        /// Every token signed by one key, by `kid`.
        Key = "key",
        /// Every request from one source address or network (`block_source`), by the address or CIDR, until
        /// `expires_at`. With `not_before` set the entry lifts earlier blocks of the same source instead.
        Source = "source",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_round_trips_and_unknown_names_are_refused() {
        for g in GrantType::ALL {
            assert_eq!(g.as_str().parse::<GrantType>(), Ok(*g));
        }
        for k in RevocationKind::ALL {
            assert_eq!(k.to_string().parse::<RevocationKind>(), Ok(*k));
        }
        assert_eq!("implicit".parse::<GrantType>(), Err(UnknownName("GrantType")));
        assert_eq!("Current".parse::<KeyState>(), Err(UnknownName("KeyState")));
    }
}
