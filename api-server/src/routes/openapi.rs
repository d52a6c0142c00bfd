//! What every `/users` operation shares in `/openapi.json`, added in one place rather than
//! repeated on each handler: the bearer security scheme and the scope each method needs
//! (when authentication is on), the answers any of them can give (401, 403, 413, 429,
//! 503), the syntax of the idempotency key, and the `X-Request-Id`
//! header on every response.

use utoipa::Modify;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder,
};

use crate::auth::{READ_SCOPE, WRITE_SCOPE};
use crate::error::PROBLEM_JSON;

const SCHEME: &str = "bearer";

/// `Idempotency-Key`: 1 to 255 visible ASCII characters (`extract::idempotency_key`).
const IDEMPOTENCY_KEY_PATTERN: &str = r"^[\x21-\x7E]{1,255}$";

pub struct UsersContract {
    pub authentication: bool,
}

impl Modify for UsersContract {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        if self.authentication {
            add_security_scheme(components);
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let users = path.starts_with("/users");
            for (operation, scope) in operations(item) {
                if users {
                    self.shared(operation, scope);
                }
                header_syntax(operation);
                // Every response, the probes' too, carries the request id.
                for response in operation.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        response.headers.insert("X-Request-Id".into(), request_id());
                    }
                }
            }
        }
    }
}

fn add_security_scheme(components: &mut utoipa::openapi::Components) {
    components.add_security_scheme(
        SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A JWT from the configured issuer (AUTH_JWKS_PATH): scope users:read \
                         for GET, users:write for the rest. Without AUTH_JWKS_PATH the API \
                         asks for no token.",
                ))
                .build(),
        ),
    );
}

/// The operations of a path with the scope each needs.
fn operations(item: &mut PathItem) -> impl Iterator<Item = (&mut Operation, &'static str)> {
    [
        (item.get.as_mut(), READ_SCOPE),
        (item.post.as_mut(), WRITE_SCOPE),
        (item.put.as_mut(), WRITE_SCOPE),
        (item.patch.as_mut(), WRITE_SCOPE),
        (item.delete.as_mut(), WRITE_SCOPE),
    ]
    .into_iter()
    .filter_map(|(operation, scope)| Some((operation?, scope)))
}

impl UsersContract {
    fn shared(&self, operation: &mut Operation, scope: &str) {
        if self.authentication {
            operation
                .security
                .get_or_insert_with(Vec::new)
                .push(SecurityRequirement::new(SCHEME, [scope]));
        }
        let has_body = operation.request_body.is_some();
        let responses = &mut operation.responses.responses;
        let mut add = |status: &str, response: Response| {
            responses.entry(status.into()).or_insert(RefOr::T(response));
        };
        if self.authentication {
            add("401", problem("No valid bearer token", false));
            add(
                "403",
                problem("The token lacks the scope this method needs", false),
            );
        }
        if has_body {
            add("413", problem("Body over 16 KiB", false));
        }
        add("429", problem("Rate limited", true));
        add(
            "503",
            problem("Postgres unavailable, starting, or overloaded", true),
        );
    }
}

/// Gives the conditional and idempotency header parameters their syntax, so generated
/// requests (and readers) know what a valid one looks like.
fn header_syntax(operation: &mut Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        // Only the key gets a pattern: an ETag list's pattern is too much for some generators
        // (schemathesis crashed compiling it); `conditional` checks that grammar.
        let pattern = match parameter.name.as_str() {
            "Idempotency-Key" => IDEMPOTENCY_KEY_PATTERN,
            _ => continue,
        };
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .build();
        parameter.schema = Some(RefOr::T(schema.into()));
    }
}

fn problem(description: &str, retry_after: bool) -> Response {
    let mut response = ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build(),
    );
    if retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                )
                .description(Some("Seconds to wait before retrying"))
                .build(),
        );
    }
    response.build()
}

fn request_id() -> utoipa::openapi::Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(128)),
        )
        .description(Some(
            "The client's X-Request-Id when it was at most 128 of [A-Za-z0-9._-], else one \
             the server made",
        ))
        .build()
}
