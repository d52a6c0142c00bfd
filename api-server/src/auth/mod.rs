//! OAuth 2.0 bearer JWTs on /users: signature against the JWKS file, `iss`, `aud`,
//! `exp`/`nbf`, then the scope the method needs. The HTTP mapping lives in `error.rs`.

pub mod jwks;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::AuthConfig;
use crate::error::ApiError;
pub use jwks::{Jwks, JwksError};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;
/// The signature algorithms accepted; anything else (`none`, HMAC) is refused.
pub const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
pub const READ_SCOPE: &str = "users:read";
pub const WRITE_SCOPE: &str = "users:write";

/// Why a request was not let through.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    MissingToken,
    #[error("the bearer token was refused: {0}")]
    InvalidToken(#[from] TokenError),
    #[error("the token lacks the {0} scope")]
    InsufficientScope(&'static str),
}

/// What was wrong with a bearer token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("it is not a well-formed JWT")]
    Malformed,
    #[error("its algorithm is not RS256, ES256 or EdDSA")]
    Algorithm,
    #[error("no key of the key set matches its kid and alg")]
    UnknownKey,
    #[error("its signature does not verify")]
    Signature,
    #[error("it has expired")]
    Expired,
    #[error("it is not valid yet (nbf)")]
    NotYetValid,
    #[error("its issuer is not the expected one")]
    Issuer,
    #[error("its audience does not include this API")]
    Audience,
    #[error("claim {0} is missing or malformed")]
    Claim(String),
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(error: jsonwebtoken::errors::Error) -> Self {
        match error.into_kind() {
            ErrorKind::InvalidSignature => Self::Signature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::Issuer,
            ErrorKind::InvalidAudience => Self::Audience,
            ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
                Self::Claim(claim)
            }
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm => Self::Algorithm,
            _ => Self::Malformed,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("AUTH_JWKS_PATH is set but {0} is not")]
    Missing(&'static str),
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// The claims we read beyond those `jsonwebtoken` validates.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    scope: String,
    #[serde(default)]
    sub: Option<String>,
}

/// Who made a request: the verified token's `sub`, for handlers that keep per-client state
/// (idempotency keys). A request extension, set by `require`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal(pub Option<String>);

impl Principal {
    /// The client's namespace for its own keys: its subject, or "" when the API is open or
    /// the token has no `sub`.
    pub fn scope(&self) -> &str {
        self.0.as_deref().unwrap_or_default()
    }
}

/// What a verified token says.
#[derive(Debug)]
pub struct Verified {
    pub principal: Principal,
    pub scopes: Scopes,
}

/// The scopes a verified token grants.
#[derive(Debug)]
pub struct Scopes(String);

impl Scopes {
    /// Whether `scope` is one of the space-separated values (RFC 8693 `scope` claim).
    pub fn grants(&self, scope: &str) -> bool {
        self.0.split(' ').any(|granted| granted == scope)
    }
}

pub struct Authenticator {
    jwks: Arc<Jwks>,
    validations: Vec<(Algorithm, Validation)>,
}

impl Authenticator {
    /// `None` when `AUTH_JWKS_PATH` is unset: the API is open (and says so once).
    pub async fn from_config(config: &AuthConfig) -> Result<Option<Self>, AuthSetupError> {
        let Some(path) = &config.jwks_path else {
            tracing::warn!(
                "AUTH_JWKS_PATH is unset: /users needs no token and is open to every client"
            );
            return Ok(None);
        };
        let issuer = config
            .jwt_issuer
            .as_deref()
            .ok_or(AuthSetupError::Missing("AUTH_JWT_ISSUER"))?;
        let audience = config
            .jwt_audience
            .as_deref()
            .ok_or(AuthSetupError::Missing("AUTH_JWT_AUDIENCE"))?;
        let jwks = Jwks::load(path.clone()).await?;
        Ok(Some(Self::new(jwks, issuer, audience)))
    }

    pub fn new(jwks: Jwks, issuer: &str, audience: &str) -> Self {
        let validations = ALGORITHMS
            .iter()
            .map(|&alg| {
                let mut validation = Validation::new(alg);
                validation.leeway = LEEWAY_SECS;
                validation.validate_nbf = true;
                validation.set_issuer(&[issuer]);
                validation.set_audience(&[audience]);
                validation.set_required_spec_claims(&["exp", "iss", "aud"]);
                (alg, validation)
            })
            .collect();
        Self {
            jwks: Arc::new(jwks),
            validations,
        }
    }

    /// Keeps the key set in step with its file until shutdown.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        self.jwks.clone().watch(shutdown).await;
    }

    /// Verifies `token` and returns whose it is and the scopes it grants.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token)?;
        let validation = self
            .validations
            .iter()
            .find_map(|(alg, validation)| (*alg == header.alg).then_some(validation))
            .ok_or(TokenError::Algorithm)?;
        let keys = self.jwks.keys();
        let mut refused = TokenError::UnknownKey;
        for key in keys.candidates(header.alg, header.kid.as_deref()) {
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, validation) {
                Ok(data) => {
                    return Ok(Verified {
                        principal: Principal(data.claims.sub),
                        scopes: Scopes(data.claims.scope),
                    });
                }
                // Without a kid several keys may fit; only a bad signature means "try the next".
                Err(error) => match TokenError::from(error) {
                    TokenError::Signature => refused = TokenError::Signature,
                    other => return Err(other),
                },
            }
        }
        Err(refused)
    }

    /// Who the request is from, when its bearer token verifies and grants `scope`.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        scope: &'static str,
    ) -> Result<Principal, AuthError> {
        let token = bearer_token(headers)?;
        let verified = self.verify(token)?;
        if verified.scopes.grants(scope) {
            Ok(verified.principal)
        } else {
            Err(AuthError::InsufficientScope(scope))
        }
    }
}

/// The token of `Authorization: Bearer <token>`. Another scheme, or no header, is a missing
/// token (RFC 6750 3.1: no error code); several headers or an empty token are malformed.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key(header::AUTHORIZATION) {
            TokenError::Malformed.into()
        } else {
            AuthError::MissingToken
        });
    };
    let value = value.to_str().map_err(|_| TokenError::Malformed)?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MissingToken);
    }
    match token.trim() {
        "" => Err(TokenError::Malformed.into()),
        token => Ok(token),
    }
}

/// `users:read` for reads, `users:write` for everything else.
pub fn required_scope(method: &Method) -> &'static str {
    if method == Method::GET || method == Method::HEAD {
        READ_SCOPE
    } else {
        WRITE_SCOPE
    }
}

/// Route layer for /users: 401 without a valid token, 403 without the method's scope.
pub async fn require(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    match auth.authorize(request.headers(), required_scope(request.method())) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => {
            // Debug only: refusals are the client's business, and a flood of them must not
            // flood the logs (the access log and metrics count them by status).
            tracing::debug!(%error, "request refused");
            ApiError::from(error).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::AUTHORIZATION, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token(&headers(&["bearer abc"])).unwrap(), "abc");
        assert_eq!(bearer_token(&headers(&["Bearer abc"])).unwrap(), "abc");
    }

    #[test]
    fn no_header_or_another_scheme_is_a_missing_token() {
        assert!(matches!(
            bearer_token(&headers(&[])),
            Err(AuthError::MissingToken)
        ));
        assert!(matches!(
            bearer_token(&headers(&["Basic dTpw"])),
            Err(AuthError::MissingToken)
        ));
    }

    #[test]
    fn an_empty_token_or_two_headers_are_malformed() {
        for bad in [&["Bearer "][..], &["Bearer a", "Bearer b"]] {
            assert!(matches!(
                bearer_token(&headers(bad)),
                Err(AuthError::InvalidToken(TokenError::Malformed))
            ));
        }
    }

    #[test]
    fn scopes_are_matched_whole() {
        let scopes = Scopes("users:read profile".into());
        assert!(scopes.grants("users:read"));
        assert!(!scopes.grants("users:write"));
        assert!(!Scopes("users:reader".into()).grants("users:read"));
    }

    #[test]
    fn reads_need_the_read_scope_and_writes_the_write_scope() {
        assert_eq!(required_scope(&Method::GET), READ_SCOPE);
        assert_eq!(required_scope(&Method::HEAD), READ_SCOPE);
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert_eq!(required_scope(&method), WRITE_SCOPE);
        }
    }
}
