//! Password hashing with Argon2id at the OWASP parameters (19 MiB, 2 passes, 1 lane).
//!
//! Hashing costs tens of milliseconds of CPU, so it runs on the blocking pool under a semaphore: a flood of
//! logins waits its turn instead of starving the async workers that serve refreshes. A login for an unknown
//! user verifies against a dummy hash made at start with the same parameters, so it takes as long as a
//! wrong password and usernames cannot be discovered by timing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::crypto::random_bytes;

/// OWASP: m = 19 MiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password (blocking: call from a blocking thread or the CLI).
///
/// # Errors
/// If no salt can be drawn or hashing fails; the message never contains the password.
pub fn hash_blocking(password: &str) -> Result<String, String> {
    let salt_bytes = random_bytes().map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt_bytes[..16]).map_err(|_| "cannot encode a salt".to_owned())?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| "password hashing failed".to_owned())
}

fn verify_blocking(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| argon2().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// The server's bounded password hasher.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    dummy: Arc<str>,
}

impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passwords").field("available", &self.permits.available_permits()).finish()
    }
}

impl Passwords {
    /// A hasher running at most `concurrency` hashes at once.
    ///
    /// # Errors
    /// If the dummy hash cannot be made.
    pub fn new(concurrency: usize) -> Result<Self, String> {
        let dummy_password =
            Zeroizing::new(tessera_token::b64::encode(&random_bytes().map_err(|e| e.to_string())?));
        let dummy = hash_blocking(&dummy_password)?;
        Ok(Passwords { permits: Arc::new(Semaphore::new(concurrency)), dummy: dummy.into() })
    }

    /// Hashes a new password.
    ///
    /// # Errors
    /// If hashing fails or the server is shutting down.
    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, String> {
        let _permit = self.permits.acquire().await.map_err(|_| "shutting down".to_owned())?;
        tokio::task::spawn_blocking(move || hash_blocking(&password))
            .await
            .map_err(|_| "password hashing failed".to_owned())?
    }

    /// Checks `password` against `phc`; with `None` (no such user) checks it against the dummy hash and
    /// answers `false`, taking the same time.
    pub async fn verify(&self, phc: Option<&str>, password: Zeroizing<String>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else { return false };
        let known = phc.is_some();
        let phc: String = phc.map_or_else(|| self.dummy.to_string(), str::to_owned);
        let ok = tokio::task::spawn_blocking(move || verify_blocking(&phc, &password)).await.unwrap_or(false);
        ok && known
    }
}

/// The password rules (`[passwords]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordConfig {
    /// The fewest characters (Unicode scalar values) a new password may have. NIST SP 800-63B-4 asks for 15
    /// where a password may be the only factor.
    pub min_length: usize,
    /// A list of breached passwords' SHA-1 hashes: a file of `HASH[:COUNT]` lines sorted by hash (what the
    /// Have I Been Pwned downloader writes), or a directory of range files `PREFIX` / `PREFIX.txt` holding
    /// `SUFFIX[:COUNT]` lines. Empty: no list.
    pub breached_list: String,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig { min_length: 15, breached_list: String::new() }
    }
}

/// The most bytes a password may have: Argon2 takes any length, but nobody types more.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Checks new passwords against the rules: length, the user's own name, and the breached list.
#[derive(Debug, Clone)]
pub struct Rules {
    min_length: usize,
    breached: Option<Breached>,
}

impl Rules {
    /// The rules of `config`; the breached list must exist.
    ///
    /// # Errors
    /// One line naming `passwords.breached_list` if it cannot be read.
    pub fn new(config: &PasswordConfig) -> Result<Self, String> {
        let breached = if config.breached_list.is_empty() {
            None
        } else {
            Some(Breached::open(Path::new(&config.breached_list))?)
        };
        Ok(Rules { min_length: config.min_length, breached })
    }

    /// Why `password` cannot be `username`'s new password, in words for the user; `Ok` if it can.
    ///
    /// # Errors
    /// The reason; a breached list that cannot be read refuses the password (fail closed).
    pub async fn check(&self, username: &str, password: &str) -> Result<(), String> {
        if password.chars().count() < self.min_length {
            return Err(format!("the password must be at least {} characters", self.min_length));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(format!("the password must be at most {MAX_PASSWORD_BYTES} bytes"));
        }
        if password.trim().eq_ignore_ascii_case(username.trim()) {
            return Err("the password must not be the username".into());
        }
        if let Some(list) = &self.breached {
            let list = list.clone();
            let digest = sha1_hex(password);
            let found = tokio::task::spawn_blocking(move || list.contains(&digest)).await;
            match found {
                Ok(Ok(false)) => {}
                Ok(Ok(true)) => {
                    return Err(
                        "this password appears in a list of breached passwords; choose another".into()
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "breached password list unreadable");
                    return Err("the password cannot be checked right now; try again later".into());
                }
                Err(_) => return Err("the password cannot be checked right now; try again later".into()),
            }
        }
        Ok(())
    }
}

/// Upper-case hex SHA-1 of a password, as breached-password lists key it.
fn sha1_hex(password: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect()
}

/// A breached-password list on disk, asked k-anonymity style: by the first five hex digits of the SHA-1,
/// answering the suffixes under that prefix, which are then compared here. The list is never loaded into
/// memory: a sorted file is searched by bisection (a 40 GB list costs about 35 reads), a directory by
/// opening the prefix's range file.
#[derive(Debug, Clone)]
pub enum Breached {
    /// One file of `HASH[:COUNT]` lines, sorted by hash.
    Sorted(PathBuf),
    /// A directory of range files.
    Ranges(PathBuf),
}

impl Breached {
    /// The list at `path`.
    ///
    /// # Errors
    /// If `path` is neither a readable file nor a directory.
    pub fn open(path: &Path) -> Result<Self, String> {
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("passwords.breached_list: cannot read {}: {}", path.display(), e.kind()))?;
        Ok(if meta.is_dir() { Breached::Ranges(path.to_owned()) } else { Breached::Sorted(path.to_owned()) })
    }

    /// Whether the upper-case hex SHA-1 `digest` is listed.
    ///
    /// # Errors
    /// If the list cannot be read.
    pub fn contains(&self, digest: &str) -> std::io::Result<bool> {
        let (prefix, suffix) = digest.split_at(5);
        Ok(self.range(prefix)?.iter().any(|s| s.eq_ignore_ascii_case(suffix)))
    }

    /// The suffixes listed under a five-hex-digit prefix (the k-anonymity range query).
    ///
    /// # Errors
    /// If the list cannot be read.
    pub fn range(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        match self {
            Breached::Ranges(dir) => {
                let text = match std::fs::read_to_string(dir.join(prefix))
                    .or_else(|_| std::fs::read_to_string(dir.join(format!("{prefix}.txt"))))
                {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                };
                Ok(text.lines().filter_map(|l| hash_of(l)).map(str::to_owned).collect())
            }
            Breached::Sorted(file) => sorted_range(file, prefix),
        }
    }
}

/// The hash part of a `HASH[:COUNT]` line, trimmed.
fn hash_of(line: &str) -> Option<&str> {
    let hash = line.split(':').next()?.trim();
    (!hash.is_empty()).then_some(hash)
}

/// Bisects a sorted `HASH[:COUNT]` file for the first line whose hash is at or after `prefix`, then reads
/// on while the lines start with it.
fn sorted_range(path: &Path, prefix: &str) -> std::io::Result<Vec<String>> {
    use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let prefix = prefix.to_ascii_uppercase();
    // A reader at the first line that starts at or after byte `at`.
    let reader_at = |file: &mut std::fs::File, at: u64| -> std::io::Result<BufReader<std::fs::File>> {
        let mut reader = BufReader::new(file.try_clone()?);
        if at > 0 {
            // From the byte before: a line start at `at` leaves only its preceding newline to skip.
            reader.seek(SeekFrom::Start(at - 1))?;
            reader.read_until(b'\n', &mut Vec::new())?;
        } else {
            reader.seek(SeekFrom::Start(0))?;
        }
        Ok(reader)
    };
    let next_hash = |reader: &mut BufReader<std::fs::File>| -> std::io::Result<Option<String>> {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(hash_of(&line).unwrap_or("").to_ascii_uppercase()))
    };
    // The smallest offset whose next line sorts at or after the prefix (or there is none).
    let (mut lo, mut hi) = (0_u64, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let at_or_after = match next_hash(&mut reader_at(&mut file, mid)?)? {
            Some(hash) => hash.as_str() >= prefix.as_str(),
            None => true,
        };
        if at_or_after { hi = mid } else { lo = mid + 1 }
    }
    let mut reader = reader_at(&mut file, lo)?;
    let mut out = Vec::new();
    while let Some(hash) = next_hash(&mut reader)? {
        match hash.strip_prefix(prefix.as_str()) {
            Some(suffix) => out.push(suffix.to_owned()),
            None => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2id_hashes_verify_and_unknown_users_never_pass() {
        let p = Passwords::new(1).unwrap();
        let phc = p.hash(Zeroizing::new("correct horse".into())).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(p.verify(Some(&phc), Zeroizing::new("correct horse".into())).await);
        assert!(!p.verify(Some(&phc), Zeroizing::new("wrong".into())).await);
        assert!(!p.verify(None, Zeroizing::new("correct horse".into())).await);
        assert!(!p.verify(Some("not a hash"), Zeroizing::new("x".into())).await);
    }

    /// SHA-1 hashes sorted as a list ships them, with counts on some lines and blank noise at the end.
    fn sample(dir: &Path) -> (PathBuf, Vec<String>) {
        let mut hashes: Vec<String> = ["password", "123456", "letmein", "correct horse battery staple"]
            .iter()
            .map(|p| sha1_hex(p))
            .chain((0..500).map(|n| sha1_hex(&format!("filler {n}"))))
            .collect();
        hashes.sort();
        let text: String = hashes
            .iter()
            .enumerate()
            .map(|(i, h)| if i % 2 == 0 { format!("{h}:{i}\n") } else { format!("{h}\n") })
            .collect();
        let file = dir.join("sorted.txt");
        std::fs::write(&file, text).unwrap();
        (file, hashes)
    }

    #[test]
    fn sorted_file_answers_every_listed_hash_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let (file, hashes) = sample(dir.path());
        let list = Breached::open(&file).unwrap();
        for h in &hashes {
            assert!(list.contains(h).unwrap(), "{h}");
        }
        assert_eq!(sha1_hex("password"), "5BAA61E4C9B93F3F0682250B6CF8331B7EE68FD8");
        assert!(!list.contains(&sha1_hex("a passphrase nobody has used")).unwrap());
        // A range holds every suffix under its prefix, as a k-anonymity API answers it.
        let first = &hashes[0];
        let range = list.range(&first[..5]).unwrap();
        assert!(range.contains(&first[5..].to_owned()));
        assert!(list.range("00000").unwrap().iter().all(|s| s.len() == 35));
    }

    #[test]
    fn range_directory_is_read_by_prefix_file() {
        let dir = tempfile::tempdir().unwrap();
        let digest = sha1_hex("password");
        std::fs::write(dir.path().join(format!("{}.txt", &digest[..5])), format!("{}:42\n", &digest[5..]))
            .unwrap();
        let list = Breached::open(dir.path()).unwrap();
        assert!(list.contains(&digest).unwrap());
        assert!(!list.contains(&sha1_hex("another password entirely")).unwrap());
        assert!(
            Breached::open(&dir.path().join("missing")).unwrap_err().starts_with("passwords.breached_list")
        );
    }

    #[tokio::test]
    async fn rules_refuse_short_own_name_and_breached_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = sample(dir.path());
        let rules = Rules::new(&PasswordConfig { min_length: 15, breached_list: file.display().to_string() })
            .unwrap();
        assert_eq!(
            rules.check("alice", "short").await.unwrap_err(),
            "the password must be at least 15 characters"
        );
        assert!(rules.check("alice", "ünïcödé-çhârs!!").await.is_ok(), "characters, not bytes");
        assert!(
            rules
                .check("alice.the.great.user", "Alice.The.Great.User")
                .await
                .unwrap_err()
                .contains("username")
        );
        let breached = rules.check("alice", "correct horse battery staple").await.unwrap_err();
        assert!(breached.contains("breached"), "{breached}");
        assert!(rules.check("alice", "a passphrase nobody has used").await.is_ok());
    }
}
