//! The job secret and the proofs of it that every store and mesh handshake carries.
//!
//! A job is authenticated when its ranks share a secret (`TUTTI_SECRET`, or the contents of the
//! file `TUTTI_SECRET_FILE`; `tutti launch` draws 32 random bytes for its ranks when neither is
//! set). The secret never crosses the network: each handshake is a challenge-response in which
//! both ends send a fresh random nonce and then prove, with HMAC-SHA-256 keyed by the secret,
//! that they know it:
//!
//! ```text
//! connector -> acceptor   hello: magic, version, job id, rank(s), flags, nonce_c (32 bytes)
//! acceptor  -> connector  its hello or challenge: flags, nonce_s (32 bytes)
//! connector -> acceptor   proof_c = HMAC(secret, "tutti/<proto>/client" | hello_c | hello_s)
//! acceptor  -> connector  verdict; when accepted, proof_s = HMAC(secret, "tutti/<proto>/server" | ...)
//! ```
//!
//! A recorded handshake cannot be replayed: the other side's nonce is new every time, and the
//! labels differ between the two directions (so a proof cannot be reflected back). The
//! connector proves first, so a stranger learns no proof over a nonce of its choosing. Proofs are
//! compared in constant time (`hmac`'s `verify_slice`).
//!
//! Without a secret the handshakes still carry the job's session id, which any client of the
//! store can read: the job is then *unauthenticated*, and [`crate::Communicator::init`] says so
//! with a warning.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::path::Path;

/// Length of a nonce and of a proof.
pub const PROOF_LEN: usize = 32;
/// A nonce or a proof.
pub type Proof = [u8; PROOF_LEN];
/// The longest secret accepted (a secret file is read up to this many bytes plus one).
pub const MAX_SECRET_LEN: usize = 4096;
/// The shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// The job secret. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// A secret from its bytes: at least [`MIN_SECRET_LEN`] and at most [`MAX_SECRET_LEN`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Secret, String> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(format!(
                "a job secret must have at least {MIN_SECRET_LEN} bytes, this one has {} \
                 (use e.g. 32 random bytes in hex)",
                bytes.len()
            ));
        }
        if bytes.len() > MAX_SECRET_LEN {
            return Err(format!(
                "a job secret must have at most {MAX_SECRET_LEN} bytes, this one has {}",
                bytes.len()
            ));
        }
        Ok(Secret(bytes))
    }

    /// A new random secret: 32 bytes from the kernel's generator, as 64 hex digits (the form
    /// `tutti launch` hands its ranks in `TUTTI_SECRET`).
    pub fn generate_hex() -> std::io::Result<String> {
        let bytes = random_bytes::<32>()?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The secret of `TUTTI_SECRET` (its bytes as they are) or of the file `TUTTI_SECRET_FILE`
    /// (its contents without a final newline), read through `get`; `None` when neither is set.
    /// Both set, an empty or short secret, or an unreadable file are errors naming the variable.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Secret>, String> {
        match (get("TUTTI_SECRET"), get("TUTTI_SECRET_FILE")) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => {
                Err("TUTTI_SECRET and TUTTI_SECRET_FILE are both set: set only one".into())
            }
            (Some(v), None) => Secret::new(v.into_bytes())
                .map(Some)
                .map_err(|e| format!("TUTTI_SECRET: {e}")),
            (None, Some(path)) => Secret::from_file(Path::new(&path))
                .map(Some)
                .map_err(|e| format!("TUTTI_SECRET_FILE={path:?}: {e}")),
        }
    }

    fn from_file(path: &Path) -> Result<Secret, String> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
        let mut bytes = Vec::new();
        file.take(MAX_SECRET_LEN as u64 + 2)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        Secret::new(bytes)
    }

    /// The proof of this secret over `parts`, under `label` (which says who proves what).
    pub fn prove(&self, label: &str, parts: &[&[u8]]) -> Proof {
        self.mac(label, parts).finalize().into_bytes().into()
    }

    /// True if `proof` is the proof of this secret over `parts` under `label` (constant time).
    pub fn verify(&self, label: &str, parts: &[&[u8]], proof: &[u8]) -> bool {
        self.mac(label, parts).verify_slice(proof).is_ok()
    }

    fn mac(&self, label: &str, parts: &[&[u8]]) -> Hmac<Sha256> {
        // An HMAC key of any length is valid: `new_from_slice` cannot fail for HMAC.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        // Length-prefixed fields: no two different lists of parts hash the same bytes.
        for field in std::iter::once(label.as_bytes()).chain(parts.iter().copied()) {
            mac.update(&(field.len() as u64).to_le_bytes());
            mac.update(field);
        }
        mac
    }
}

/// `N` random bytes from the kernel (`getrandom(2)`).
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        let rest = &mut out[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(out)
}

/// A fresh nonce.
pub fn nonce() -> std::io::Result<Proof> {
    random_bytes::<PROOF_LEN>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn proofs_verify_only_with_the_same_secret_label_and_parts() {
        let a = secret("0123456789abcdef-a");
        let b = secret("0123456789abcdef-b");
        let p = a.prove("tutti/x/client", &[b"hello", b"nonce"]);
        assert!(a.verify("tutti/x/client", &[b"hello", b"nonce"], &p));
        assert!(!b.verify("tutti/x/client", &[b"hello", b"nonce"], &p));
        assert!(!a.verify("tutti/x/server", &[b"hello", b"nonce"], &p));
        assert!(!a.verify("tutti/x/client", &[b"hello", b"nonc3"], &p));
        // Moving a byte between parts changes the proof (fields are length-prefixed).
        assert!(!a.verify("tutti/x/client", &[b"hellon", b"once"], &p));
        assert!(!a.verify("tutti/x/client", &[b"hello", b"nonce"], &p[..31]));
        assert!(!a.verify("tutti/x/client", &[b"hello", b"nonce"], &[0; 32]));
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2 ("Jefe" is too short for a job secret: check the primitive).
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let out: [u8; 32] = mac.finalize().into_bytes().into();
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn secrets_from_variables() {
        let none = Secret::from_vars(|_| None).unwrap();
        assert!(none.is_none());
        let s = Secret::from_vars(|k| (k == "TUTTI_SECRET").then(|| "x".repeat(20))).unwrap();
        assert_eq!(s, Some(secret(&"x".repeat(20))));
        let e = Secret::from_vars(|k| (k == "TUTTI_SECRET").then(|| "short".into())).unwrap_err();
        assert!(
            e.contains("TUTTI_SECRET") && e.contains("at least 16"),
            "{e}"
        );
        let e = Secret::from_vars(|_| Some("0123456789abcdef0".into())).unwrap_err();
        assert!(e.contains("both set"), "{e}");
        let dir = std::env::temp_dir().join(format!("tutti-secret-{}", std::process::id()));
        std::fs::write(&dir, "0123456789abcdef0123\n").unwrap();
        let path = dir.to_string_lossy().into_owned();
        let s = Secret::from_vars(|k| (k == "TUTTI_SECRET_FILE").then(|| path.clone())).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(s, Some(secret("0123456789abcdef0123")));
        let e =
            Secret::from_vars(|k| (k == "TUTTI_SECRET_FILE").then(|| path.clone())).unwrap_err();
        assert!(
            e.contains("TUTTI_SECRET_FILE") && e.contains("cannot open"),
            "{e}"
        );
    }

    #[test]
    fn generated_secrets_are_hex_and_differ() {
        let a = Secret::generate_hex().unwrap();
        let b = Secret::generate_hex().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(
            !format!("{:?}", secret(&a)).contains(&a),
            "Debug must hide it"
        );
    }
}
