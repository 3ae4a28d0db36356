//! Path normalisation: the one spelling of a request path that the route policy matches and the service sees.
//!
//! Percent-encoded unreserved characters are decoded (`%2e` is `.`), `.` and `..` segments are resolved as
//! RFC 3986 §5.2.4 does, empty segments (`//`) are dropped and a trailing slash is removed. Spellings that
//! different servers read differently are refused outright rather than guessed at: an encoded `/` or `\`, a
//! raw `\`, a `;` (path parameters), NUL and other control characters, and broken percent escapes.

use std::fmt;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BrokenEscape,
    /// An encoded `/` or `\`, a raw `\`, a `;`, or a control character.
    Ambiguous,
}

impl fmt::Display for BadPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAbsolute => "the path does not start with /",
            Self::BrokenEscape => "the path has a broken percent escape",
            Self::Ambiguous => {
                "the path has an encoded separator, a backslash, a semicolon or a control character"
            }
        })
    }
}

impl std::error::Error for BadPath {}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes one segment: unreserved characters are decoded, other escapes are kept with upper-case hex.
fn segment(raw: &[u8], out: &mut String) -> Result<(), BadPath> {
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) =
                    (raw.get(i + 1).copied().and_then(hex), raw.get(i + 2).copied().and_then(hex))
                else {
                    return Err(BadPath::BrokenEscape);
                };
                let decoded = hi << 4 | lo;
                if unreserved(decoded) {
                    out.push(char::from(decoded));
                } else if matches!(decoded, b'/' | b'\\' | b';' | b'%') || decoded.is_ascii_control() {
                    // `%25` is refused too: a second decoding by the service would turn `%252e` into `.`.
                    return Err(BadPath::Ambiguous);
                } else {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    out.push('%');
                    out.push(char::from(HEX[usize::from(hi)]));
                    out.push(char::from(HEX[usize::from(lo)]));
                }
                i += 3;
            }
            b'\\' | b';' => return Err(BadPath::Ambiguous),
            _ if b.is_ascii_control() || !b.is_ascii() => return Err(BadPath::Ambiguous),
            _ => {
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    Ok(())
}

/// The normal form of a request path (without its query).
///
/// # Errors
/// [`BadPath`] when the path is not absolute or is spelt in a way servers disagree on.
pub fn normalize(path: &str) -> Result<String, BadPath> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(BadPath::NotAbsolute);
    };
    let mut segments: Vec<String> = Vec::new();
    for raw in rest.split('/') {
        let mut decoded = String::with_capacity(raw.len());
        segment(raw.as_bytes(), &mut decoded)?;
        match decoded.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(decoded),
        }
    }
    if segments.is_empty() {
        return Ok("/".to_owned());
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    Ok(out)
}

/// Whether `path` is already in normal form, for the common case that needs no allocation.
#[must_use]
pub fn is_normal(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    let Some(rest) = path.strip_prefix('/') else { return false };
    !rest.is_empty()
        && !rest.ends_with('/')
        && rest.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii() && !b.is_ascii_control() && !matches!(b, b'%' | b'\\' | b';'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dot_segments_doubled_slashes_and_trailing_slashes_collapse() {
        for (raw, want) in [
            ("/", "/"),
            ("//", "/"),
            ("/orders", "/orders"),
            ("/orders/", "/orders"),
            ("//orders//1", "/orders/1"),
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2e/admin/", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/./admin/.", "/admin"),
            ("/../../admin", "/admin"),
            ("/a/b/../../c", "/c"),
            ("/%61dmin", "/admin"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/...", "/..."),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        for raw in [
            "/public%2f..%2fadmin",
            "/public%2F..%2Fadmin",
            "/public\\..\\admin",
            "/public%5c..%5cadmin",
            "/admin;jsessionid=1",
            "/admin%3b",
            "/admin%00",
            "/admin%252e",
            "/admin\t",
        ] {
            assert_eq!(normalize(raw), Err(BadPath::Ambiguous), "{raw}");
        }
        for raw in ["/a%", "/a%2", "/a%zz", "/a%2g"] {
            assert_eq!(normalize(raw), Err(BadPath::BrokenEscape), "{raw}");
        }
        assert_eq!(normalize("admin"), Err(BadPath::NotAbsolute));
        assert_eq!(normalize("*"), Err(BadPath::NotAbsolute));
    }

    proptest! {
        #[test]
        fn normal_form_is_a_fixed_point(path in "/[a-z./%2eE5cC;]{0,24}") {
            if let Ok(once) = normalize(&path) {
                prop_assert_eq!(normalize(&once), Ok(once.clone()));
                prop_assert!(!once.split('/').any(|s| s == ".." || s == "."));
            }
        }

        #[test]
        fn is_normal_agrees_with_normalize(path in "/[a-z./%;]{0,16}") {
            if is_normal(&path) {
                prop_assert_eq!(normalize(&path), Ok(path.clone()));
            }
        }
    }
}
