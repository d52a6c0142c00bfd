//! The verification keys: a JWKS file, parsed once per change and re-read on a timer so a
//! rotated key (a new Secret mounted in place) is used without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio_util::sync::CancellationToken;

/// How often the file is read and compared. A few KiB once a second costs nothing, and
/// comparing contents (not mtimes) also sees a rewrite within the same second; Kubernetes
/// itself takes up to a minute to update a mounted Secret.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// One key the server accepts signatures from.
pub struct Key {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub decoding: DecodingKey,
}

/// The usable keys of one version of the file.
pub struct KeySet {
    keys: Vec<Key>,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read the JWKS file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the JWKS file {path} is not a JSON Web Key Set")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the JWKS file {path} has no RS256, ES256 or EdDSA signature key")]
    NoUsableKey { path: PathBuf },
}

impl KeySet {
    /// The signature keys of `bytes`; keys of other types, curves or uses are skipped.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, JwksError> {
        let set: JwkSet = serde_json::from_slice(bytes).map_err(|source| JwksError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let keys: Vec<Key> = set.keys.iter().filter_map(usable).collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey {
                path: path.to_owned(),
            });
        }
        Ok(Self { keys })
    }

    /// The keys that may have signed a token with this header: same algorithm, and the same
    /// `kid` when the token names one.
    pub fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |key| {
            key.alg == alg && kid.is_none_or(|kid| key.kid.as_deref() == Some(kid))
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The algorithm a JWK verifies, from its type and curve; `None` for anything but an RSA,
/// P-256 or Ed25519 signature key, or for a key whose `alg` says otherwise.
fn algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(alg),
        Some(declared) => (Algorithm::try_from(declared).ok() == Some(alg)).then_some(alg),
    }
}

fn usable(jwk: &Jwk) -> Option<Key> {
    let kid = jwk.common.key_id.clone();
    let Some(alg) = algorithm(jwk) else {
        tracing::warn!(
            ?kid,
            "JWKS key skipped: not an RS256, ES256 or EdDSA signature key"
        );
        return None;
    };
    match DecodingKey::from_jwk(jwk) {
        Ok(decoding) => Some(Key { kid, alg, decoding }),
        Err(error) => {
            tracing::warn!(?kid, %error, "JWKS key skipped: invalid");
            None
        }
    }
}

/// The current key set and the file it comes from.
pub struct Jwks {
    path: PathBuf,
    current: RwLock<Arc<KeySet>>,
    /// The bytes last read, to skip parsing an unchanged file (and warn once per bad file).
    last_read: Mutex<Vec<u8>>,
}

impl Jwks {
    /// Reads the file; a missing, unreadable or keyless file is an error (at start-up).
    pub async fn load(path: PathBuf) -> Result<Self, JwksError> {
        let bytes = read(&path).await?;
        let keys = KeySet::parse(&path, &bytes)?;
        tracing::info!(path = %path.display(), keys = keys.len(), "JWKS loaded");
        Ok(Self {
            path,
            current: RwLock::new(Arc::new(keys)),
            last_read: Mutex::new(bytes),
        })
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the file; when it changed and parses, its keys replace the current ones.
    /// When it cannot be read or parsed the current keys stay, and the error is returned.
    pub async fn reload_if_changed(&self) -> Result<bool, JwksError> {
        let bytes = read(&self.path).await?;
        {
            let mut last = self
                .last_read
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *last == bytes {
                return Ok(false);
            }
            last.clone_from(&bytes);
        }
        let keys = KeySet::parse(&self.path, &bytes)?;
        tracing::info!(path = %self.path.display(), keys = keys.len(), "JWKS reloaded");
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(true)
    }

    /// Re-reads the file every [`CHECK_EVERY`] until shutdown.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            match self.reload_if_changed().await {
                Ok(_) => failing = false,
                // A file that stays unreadable (a Secret being replaced) is logged once.
                Err(error @ JwksError::Read { .. }) if !failing => {
                    failing = true;
                    tracing::warn!(error = %error, "JWKS not re-read; keeping the current keys");
                }
                Err(JwksError::Read { .. }) => {}
                Err(error) => {
                    tracing::warn!(error = %error, "JWKS not reloaded; keeping the current keys");
                }
            }
        }
    }
}

async fn read(path: &Path) -> Result<Vec<u8>, JwksError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| JwksError::Read {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    /// A JWKS file of one Ed25519 key, loaded.
    async fn loaded(dir: &Path) -> (PathBuf, Jwks) {
        let path = dir.join("jwks.json");
        let good = format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{ED25519_X}"}}]}}"#);
        std::fs::write(&path, good).unwrap();
        let jwks = Jwks::load(path.clone()).await.unwrap();
        (path, jwks)
    }

    fn parse(json: &str) -> Result<KeySet, JwksError> {
        KeySet::parse(Path::new("jwks.json"), json.as_bytes())
    }

    #[test]
    fn an_ed25519_key_verifies_eddsa() {
        let keys = parse(&format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{ED25519_X}","kid":"a"}}]}}"#
        ))
        .unwrap();
        assert_eq!(keys.candidates(Algorithm::EdDSA, Some("a")).count(), 1);
        assert_eq!(keys.candidates(Algorithm::EdDSA, None).count(), 1);
        assert_eq!(keys.candidates(Algorithm::EdDSA, Some("b")).count(), 0);
        assert_eq!(keys.candidates(Algorithm::ES256, Some("a")).count(), 0);
    }

    #[test]
    fn symmetric_keys_are_skipped() {
        let error = parse(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#);
        assert!(matches!(error, Err(JwksError::NoUsableKey { .. })));
    }

    #[test]
    fn encryption_keys_are_skipped() {
        let error = parse(&format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{ED25519_X}","use":"enc"}}]}}"#
        ));
        assert!(matches!(error, Err(JwksError::NoUsableKey { .. })));
    }

    #[test]
    fn a_key_whose_alg_contradicts_its_type_is_skipped() {
        let error = parse(&format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{ED25519_X}","alg":"RS256"}}]}}"#
        ));
        assert!(matches!(error, Err(JwksError::NoUsableKey { .. })));
    }

    #[tokio::test]
    async fn a_broken_file_keeps_the_keys_already_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (path, jwks) = loaded(dir.path()).await;

        std::fs::write(&path, "{ not json").unwrap();
        assert!(matches!(
            jwks.reload_if_changed().await,
            Err(JwksError::Parse { .. })
        ));
        assert_eq!(jwks.keys().candidates(Algorithm::EdDSA, None).count(), 1);

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            jwks.reload_if_changed().await,
            Err(JwksError::Read { .. })
        ));
        assert_eq!(jwks.keys().len(), 1);
    }

    #[tokio::test]
    async fn an_unchanged_file_is_not_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let (_, jwks) = loaded(dir.path()).await;

        assert!(!jwks.reload_if_changed().await.unwrap());
    }

    #[test]
    fn a_file_that_is_not_a_jwks_is_rejected() {
        assert!(matches!(
            parse(r#"{"kty":"RSA"}"#),
            Err(JwksError::Parse { .. })
        ));
    }
}
