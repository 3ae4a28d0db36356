//! The route policy: which method and path need which scopes and roles, read from a TOML file.
//!
//! ```toml
//! default = "deny"            # or "authenticated": any valid token may call an unlisted route
//!
//! [[route]]
//! method = "GET"              # a method, a list of methods, or "*"
//! path = "/orders/{id}"       # literal segments, `{name}` or `*` for one segment, a final `**` for the rest
//! scopes = ["orders:read"]    # every one of these must be granted
//!
//! [[route]]
//! method = ["POST", "DELETE"]
//! path = "/admin/**"
//! scopes = ["orders:write"]
//! roles = ["admin"]           # every one of these must be held
//!
//! [[route]]
//! method = "GET"
//! path = "/health"
//! public = true               # no token needed
//! ```
//!
//! Rules are tried in file order and the first match decides. Paths are matched in the normal form of
//! [`crate::path`]; a pattern must itself be in that form. `HEAD` matches rules for `GET`. Any error stops the
//! load with a message naming the file's line.

use std::fmt;
use std::path::Path;

use http::Method;
use serde::Deserialize;
use toml::Spanned;

/// What happens to a request that no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unlisted {
    /// Refused with 403 (the default).
    #[default]
    Deny,
    /// Allowed to any valid token.
    Authenticated,
}

/// One pattern segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

/// The methods a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Methods {
    Any,
    Listed(Vec<Method>),
}

/// One rule of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    methods: Methods,
    segments: Vec<Segment>,
    /// The pattern as written, used as the route's name in events and metrics.
    pub pattern: String,
    /// Scopes that must all be granted.
    pub scopes: Vec<String>,
    /// Roles that must all be held.
    pub roles: Vec<String>,
    /// Whether the route needs no token at all.
    pub public: bool,
    /// The rule's line in the file (1-based), for messages.
    pub line: usize,
}

impl Route {
    /// Whether this rule covers `method` on the normalised `path`.
    #[must_use]
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.method_matches(method) && self.path_matches(path)
    }

    fn method_matches(&self, method: &Method) -> bool {
        match &self.methods {
            Methods::Any => true,
            Methods::Listed(list) => {
                list.iter().any(|m| m == method || (method == Method::HEAD && m == Method::GET))
            }
        }
    }

    fn path_matches(&self, path: &str) -> bool {
        let mut parts = path.split('/').skip(1).filter(|s| !s.is_empty());
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if parts.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// Whether a holder of `scope` (space-separated) and `roles` meets this rule's requirements; if not, the
    /// scopes it needs, for the `WWW-Authenticate` answer.
    #[must_use]
    pub fn permits(&self, scope: Option<&str>, roles: &[String]) -> bool {
        let granted = scope.unwrap_or("");
        self.scopes.iter().all(|need| granted.split(' ').any(|s| s == need))
            && self.roles.iter().all(|need| roles.iter().any(|r| r == need))
    }
}

/// A loaded route policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// What happens to unlisted routes (the file's `default` key).
    pub unlisted: Unlisted,
    /// The rules, in file order.
    pub routes: Vec<Route>,
}

/// Why a policy could not be loaded: the line and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file, if it was read from one.
    pub file: Option<String>,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.as_deref().unwrap_or("route policy");
        match self.line {
            Some(line) => write!(f, "{file} line {line}: {}", self.message),
            None => write!(f, "{file}: {}", self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    default: Unlisted,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawMethods {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    method: Spanned<RawMethods>,
    path: Spanned<String>,
    #[serde(default)]
    scopes: Vec<Spanned<String>>,
    #[serde(default)]
    roles: Vec<Spanned<String>>,
    #[serde(default)]
    public: bool,
}

fn line_of(src: &str, offset: usize) -> usize {
    src.get(..offset).map_or(1, |before| before.matches('\n').count() + 1)
}

fn parse_method(m: &str) -> Option<Method> {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"];
    KNOWN.contains(&m).then(|| Method::from_bytes(m.as_bytes()).ok()).flatten()
}

fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    if pattern == "/" {
        return Ok(Vec::new());
    }
    if !pattern.starts_with('/') {
        return Err(format!("path {pattern:?} must start with /"));
    }
    let literal_form: String = pattern.replace(['{', '}', '*'], "x");
    if !crate::path::is_normal(&literal_form) {
        return Err(format!(
            "path {pattern:?} is not in normal form (no empty, `.` or `..` segments, no trailing /, no %, \\ or ;)"
        ));
    }
    let parts: Vec<&str> = pattern.split('/').skip(1).collect();
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let seg = match *part {
            "**" if i + 1 == parts.len() => Segment::Rest,
            "**" => return Err(format!("path {pattern:?}: ** may only be the last segment")),
            "*" => Segment::One,
            p if p.len() > 2 && p.starts_with('{') && p.ends_with('}') => {
                let name = &p[1..p.len() - 1];
                if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(format!("path {pattern:?}: bad parameter name {name:?}"));
                }
                Segment::One
            }
            p if p.contains(['{', '}', '*']) => {
                return Err(format!("path {pattern:?}: segment {p:?} mixes a wildcard with text"));
            }
            p => Segment::Literal(p.to_owned()),
        };
        out.push(seg);
    }
    Ok(out)
}

fn check_names(list: &[Spanned<String>], what: &str, src: &str) -> Result<Vec<String>, (usize, String)> {
    list.iter()
        .map(|s| {
            let v = s.get_ref();
            if v.is_empty()
                || v.bytes().any(|b| b == b' ' || b == b'"' || b == b'\\' || !b.is_ascii_graphic())
            {
                Err((line_of(src, s.span().start), format!("{what} {v:?} is not a valid name")))
            } else {
                Ok(v.clone())
            }
        })
        .collect()
}

impl Policy {
    /// Parses a policy from TOML text.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the line of the first problem.
    pub fn parse(src: &str) -> Result<Self, PolicyError> {
        let fail = |line: Option<usize>, message: String| PolicyError { file: None, line, message };
        let raw: RawPolicy = toml::from_str(src).map_err(|e| {
            let line = e.span().map(|s| line_of(src, s.start));
            fail(line, e.message().to_owned())
        })?;
        let mut routes = Vec::with_capacity(raw.route.len());
        for spanned in raw.route {
            let line = line_of(src, spanned.span().start);
            let r = spanned.into_inner();
            let method_line = line_of(src, r.method.span().start);
            let method = |m: &String| {
                parse_method(m).ok_or_else(|| fail(Some(method_line), format!("unknown method {m:?}")))
            };
            let methods = match r.method.get_ref() {
                RawMethods::One(m) if m == "*" => Methods::Any,
                RawMethods::One(m) => Methods::Listed(vec![method(m)?]),
                RawMethods::Many(list) if list.is_empty() => {
                    return Err(fail(Some(method_line), "method list is empty".into()));
                }
                RawMethods::Many(list) => Methods::Listed(list.iter().map(method).collect::<Result<_, _>>()?),
            };
            let path_line = line_of(src, r.path.span().start);
            let segments = parse_pattern(r.path.get_ref()).map_err(|m| fail(Some(path_line), m))?;
            let scopes = check_names(&r.scopes, "scope", src).map_err(|(l, m)| fail(Some(l), m))?;
            let roles = check_names(&r.roles, "role", src).map_err(|(l, m)| fail(Some(l), m))?;
            if r.public && (!scopes.is_empty() || !roles.is_empty()) {
                return Err(fail(Some(line), "a public route cannot also require scopes or roles".into()));
            }
            routes.push(Route {
                methods,
                segments,
                pattern: r.path.into_inner(),
                scopes,
                roles,
                public: r.public,
                line,
            });
        }
        Ok(Policy { unlisted: raw.default, routes })
    }

    /// Reads and parses a policy file.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the file, and the line when the content is at fault.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let file = Some(path.display().to_string());
        let src = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: file.clone(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&src).map_err(|e| PolicyError { file, ..e })
    }

    /// The first rule matching `method` and the normalised `path`.
    #[must_use]
    pub fn find(&self, method: &Method, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(method, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
default = "deny"

[[route]]
method = "GET"
path = "/orders/{id}"
scopes = ["orders:read"]

[[route]]
method = ["POST", "DELETE"]
path = "/admin/**"
scopes = ["orders:write"]
roles = ["admin"]

[[route]]
method = "*"
path = "/health"
public = true
"#;

    #[test]
    fn first_matching_rule_decides_and_unlisted_routes_match_nothing() {
        let p = Policy::parse(SAMPLE).unwrap();
        assert_eq!(p.find(&Method::GET, "/orders/7").map(|r| r.line), Some(4));
        assert_eq!(p.find(&Method::HEAD, "/orders/7").map(|r| r.line), Some(4));
        assert!(p.find(&Method::POST, "/orders/7").is_none());
        assert!(p.find(&Method::GET, "/orders").is_none());
        assert!(p.find(&Method::GET, "/orders/7/items").is_none());
        assert_eq!(p.find(&Method::DELETE, "/admin/users/1").map(|r| r.line), Some(9));
        assert_eq!(p.find(&Method::POST, "/admin").map(|r| r.line), Some(9));
        assert!(p.find(&Method::GET, "/admin/users").is_none());
        assert!(p.find(&Method::PUT, "/health").unwrap().public);
        assert_eq!(p.unlisted, Unlisted::Deny);
    }

    #[test]
    fn requirements_need_every_scope_and_role() {
        let p = Policy::parse(SAMPLE).unwrap();
        let admin = p.find(&Method::POST, "/admin/x").unwrap();
        let roles = vec!["admin".to_owned()];
        assert!(admin.permits(Some("orders:read orders:write"), &roles));
        assert!(!admin.permits(Some("orders:read"), &roles));
        assert!(!admin.permits(Some("orders:write"), &[]));
        assert!(!admin.permits(Some("orders:writer"), &roles));
        assert!(!admin.permits(None, &roles));
    }

    #[test]
    fn bad_policy_names_the_line() {
        let cases = [
            ("[[route]]\nmethod = \"GET\"\npath = \"/a/../b\"\n", 3, "normal form"),
            ("[[route]]\nmethod = \"GTE\"\npath = \"/a\"\n", 2, "unknown method"),
            ("\n\n[[route]]\nmethod = [\"GET\", \"FETCH\"]\npath = \"/a\"\n", 4, "unknown method"),
            ("[[route]]\nmethod = \"GET\"\npath = \"/a/**/b\"\n", 3, "last segment"),
            ("[[route]]\nmethod = \"GET\"\npath = \"a\"\n", 3, "start with /"),
            ("[[route]]\nmethod = \"GET\"\npath = \"/a/\"\n", 3, "normal form"),
            ("[[route]]\nmethod = \"GET\"\npath = \"/a\"\nscope = [\"x\"]\n", 4, "unknown field"),
            ("[[route]]\nmethod = \"GET\"\npath = \"/a\"\nscopes = [\"a b\"]\n", 4, "not a valid name"),
            ("\n[[route]]\nmethod = \"GET\"\npath = \"/a\"\npublic = true\nroles = [\"x\"]\n", 2, "public"),
            ("default = \"allow\"\n", 1, "unknown variant"),
            ("[[route]]\nmethod = \"GET\"\npath = \"/{id\"\n", 3, "mixes"),
            ("[[route]]\nmethod = \"GET\"\n", 1, "missing field"),
            ("x = \n", 1, ""),
        ];
        for (src, line, message) in cases {
            let err = Policy::parse(src).unwrap_err();
            assert_eq!(err.line, Some(line), "{src:?}: {err}");
            assert!(err.message.contains(message), "{src:?}: {err}");
        }
        let shown = Policy::parse("[[route]]\nmethod = \"GTE\"\npath = \"/a\"\n").unwrap_err();
        assert_eq!(shown.to_string(), "route policy line 2: unknown method \"GTE\"");
    }

    #[test]
    fn patterns_match_whole_segments_only() {
        let p = Policy::parse("[[route]]\nmethod = \"GET\"\npath = \"/files/*/raw\"\n[[route]]\nmethod = \"GET\"\npath = \"/\"\n").unwrap();
        assert!(p.find(&Method::GET, "/files/a/raw").is_some());
        assert!(p.find(&Method::GET, "/files/raw").is_none());
        assert!(p.find(&Method::GET, "/files/a/b/raw").is_none());
        assert!(p.find(&Method::GET, "/").is_some());
        assert!(p.find(&Method::GET, "/x").is_none());
    }
}
