//! Signing keys and bearer tokens for the auth tests. The keys in `keys/` were made with
//! `openssl genpkey` for these tests only; they protect nothing.

use std::path::PathBuf;

use api_server::config::AuthConfig;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://idp.example.test/";
pub const AUDIENCE: &str = "users-api";
/// `{"alg":"none","typ":"JWT"}`, base64url-encoded.
pub const ALG_NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

pub struct TestKey {
    pub kid: &'static str,
    pub alg: Algorithm,
    encoding: EncodingKey,
}

impl TestKey {
    fn from_pem(kid: &'static str, alg: Algorithm, pem: &[u8]) -> Self {
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            other => panic!("no test key for {other:?}"),
        }
        .unwrap();
        Self { kid, alg, encoding }
    }

    pub fn rs256() -> Self {
        Self::from_pem("rs256", Algorithm::RS256, include_bytes!("keys/rs256.pem"))
    }

    pub fn es256() -> Self {
        Self::from_pem("es256", Algorithm::ES256, include_bytes!("keys/es256.pem"))
    }

    pub fn eddsa() -> Self {
        Self::from_pem("eddsa", Algorithm::EdDSA, include_bytes!("keys/eddsa.pem"))
    }

    /// Another Ed25519 key: the one rotated in, or an impostor under another key's kid.
    pub fn eddsa_rotated() -> Self {
        Self::from_pem(
            "eddsa-rotated",
            Algorithm::EdDSA,
            include_bytes!("keys/eddsa-rotated.pem"),
        )
    }

    /// This key's public half as a JWK, with its kid.
    pub fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.to_owned());
        serde_json::to_value(jwk).unwrap()
    }

    /// `claims` signed by this key, the header naming `kid` (or no kid).
    pub fn sign_as(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(Some(self.kid), claims)
    }

    /// A `users:read` token with one claim set to `value` (`null` removes it).
    pub fn token_with(&self, claim: &str, value: Value) -> String {
        let mut claims = claims("users:read");
        match value {
            Value::Null => claims.as_object_mut().unwrap().remove(claim),
            value => claims
                .as_object_mut()
                .unwrap()
                .insert(claim.to_owned(), value),
        };
        self.sign(&claims)
    }

    /// A valid token granting `scope`.
    pub fn token(&self, scope: &str) -> String {
        self.sign(&claims(scope))
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims that pass every check, granting `scope`; tests change one of them.
pub fn claims(scope: &str) -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": [AUDIENCE, "another-api"],
        "sub": "test-client",
        "iat": now,
        "nbf": now - 5,
        "exp": now + 300,
        "scope": scope,
    })
}

/// A JWKS file in a temporary directory, replaced the way a Secret volume is updated: a
/// new file renamed over the old one.
pub struct JwksFile {
    dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl JwksFile {
    pub fn new(keys: &[&TestKey]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let file = Self { dir, path };
        file.replace(keys);
        file
    }

    pub fn replace(&self, keys: &[&TestKey]) {
        let jwks = json!({ "keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>() });
        let next = self.dir.path().join("jwks.json.next");
        std::fs::write(&next, serde_json::to_vec_pretty(&jwks).unwrap()).unwrap();
        std::fs::rename(next, &self.path).unwrap();
    }

    pub fn auth_config(&self) -> AuthConfig {
        AuthConfig {
            jwks_path: Some(self.path.clone()),
            jwt_issuer: Some(ISSUER.to_owned()),
            jwt_audience: Some(AUDIENCE.to_owned()),
        }
    }
}
