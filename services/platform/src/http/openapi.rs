//! The answers every operation can give because of the platform around it, added to every
//! service's OpenAPI document: the handlers' annotations describe their own answers, and these
//! come from layers they never see. Found missing by fuzzing each API from its document
//! (schemathesis' status-code conformance).

use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder,
        path::{Operation, ParameterIn, PathItem},
    },
};

use super::{PROBLEM_CONTENT_TYPE, Problem};

/// Adds, where an operation does not say otherwise:
/// * 400 to every operation (a NUL in the path or the query is refused before routing);
/// * 413 and 415 to every operation with a body (the body limit, the JSON content type);
/// * 503 to every operation (the request timeout, a database out of reach, a dependency
///   starting), with `Retry-After` where a retry soon succeeds;
/// * 409 and 422 to every operation that takes an `Idempotency-Key` (the first request with
///   the key still running; the key used with another request).
pub fn with_platform_responses(mut openapi: OpenApi) -> OpenApi {
    for item in openapi.paths.paths.values_mut() {
        for operation in operations(item) {
            add(operation, "400", "Solicitud inválida (problem+json)");
            if operation.request_body.is_some() {
                add(
                    operation,
                    "413",
                    "Cuerpo mayor que el límite del servicio (problem+json)",
                );
                add(
                    operation,
                    "415",
                    "El cuerpo debe ser application/json (problem+json)",
                );
            }
            if takes_idempotency_key(operation) {
                add(
                    operation,
                    "409",
                    "La primera solicitud con esta Idempotency-Key aún se procesa (problem+json)",
                );
                add(
                    operation,
                    "422",
                    "Esta Idempotency-Key ya se usó con otra solicitud (problem+json)",
                );
            }
            add(
                operation,
                "503",
                "Servicio no disponible por ahora: tiempo de espera agotado o base de datos fuera de alcance; reintente (problem+json)",
            );
        }
    }
    let components = openapi.components.get_or_insert_with(Default::default);
    let mut schemas = vec![(Problem::name().into_owned(), Problem::schema())];
    Problem::schemas(&mut schemas);
    for (name, schema) in schemas {
        components.schemas.entry(name).or_insert(schema);
    }
    openapi
}

/// The name of the security scheme [`with_bearer_auth`] declares.
pub const BEARER_SCHEME: &str = "credencial";

/// Marks every operation of `openapi` as needing `Authorization: Bearer <credential>`, with the
/// 401 and 403 answers that come with it (where an operation does not say otherwise), and
/// declares the scheme with `description` (what a credential is). An operation that declares
/// its own security is left as it says: `security(())` in its `#[utoipa::path]` (OpenAPI's
/// `security: [{}]`) marks one open to anyone, such as a service's health under its prefix.
/// The routes the platform adds around a service (`/health`, `/ready`, `/metrics`, `/docs`) are
/// not in the document and need none.
pub fn with_bearer_auth(mut openapi: OpenApi, description: &str) -> OpenApi {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
    for item in openapi.paths.paths.values_mut() {
        for operation in operations(item).filter(|o| o.security.is_none()) {
            operation.security = Some(vec![SecurityRequirement::new(
                BEARER_SCHEME,
                Vec::<String>::new(),
            )]);
            add(
                operation,
                "401",
                "Sin credencial, o una credencial no válida, revocada o caducada (problem+json, WWW-Authenticate: Bearer)",
            );
            add(
                operation,
                "403",
                "La credencial es válida pero no permite esta operación (problem+json)",
            );
            add(
                operation,
                "429",
                "Demasiadas credenciales rechazadas desde esta dirección: ninguna se mira hasta Retry-After (problem+json)",
            );
        }
    }
    let mut scheme = Http::new(HttpAuthScheme::Bearer);
    scheme.description = Some(description.to_owned());
    openapi
        .components
        .get_or_insert_with(Default::default)
        .add_security_scheme(BEARER_SCHEME, SecurityScheme::Http(scheme));
    openapi
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
        item.options.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn takes_idempotency_key(operation: &Operation) -> bool {
    operation.parameters.iter().flatten().any(|parameter| {
        matches!(parameter, RefOr::T(p) if p.parameter_in == ParameterIn::Header
            && p.name.eq_ignore_ascii_case("idempotency-key"))
    })
}

fn add(operation: &mut Operation, status: &str, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        PROBLEM_CONTENT_TYPE,
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build(),
            )
        });
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::{
        HttpMethod, OpenApiBuilder, PathItem, PathsBuilder, ResponseBuilder, Responses,
        path::{OperationBuilder, ParameterBuilder},
        request_body::RequestBodyBuilder,
    };

    use super::*;

    #[test]
    fn every_operation_gets_the_platforms_answers_and_keeps_its_own() {
        let own_400 = ResponseBuilder::new().description("campo inválido").build();
        let post = OperationBuilder::new()
            .request_body(Some(RequestBodyBuilder::new().build()))
            .parameter(
                ParameterBuilder::new()
                    .name("Idempotency-Key")
                    .parameter_in(ParameterIn::Header),
            )
            .response("201", ResponseBuilder::new().description("creado").build())
            .response("400", own_400)
            .build();
        let get = OperationBuilder::new()
            .response("200", ResponseBuilder::new().description("ok").build())
            .build();
        let openapi = OpenApiBuilder::new()
            .paths(
                PathsBuilder::new()
                    .path("/pagos", PathItem::new(HttpMethod::Post, post))
                    .path("/pagos/{id}", PathItem::new(HttpMethod::Get, get)),
            )
            .build();
        let openapi = with_platform_responses(openapi);
        let codes = |path: &str, pick: fn(&PathItem) -> Option<&Operation>| {
            let responses: &Responses = &pick(&openapi.paths.paths[path]).unwrap().responses;
            responses.responses.keys().cloned().collect::<Vec<_>>()
        };
        assert_eq!(
            codes("/pagos", |i| i.post.as_ref()),
            ["201", "400", "409", "413", "415", "422", "503"]
        );
        assert_eq!(
            codes("/pagos/{id}", |i| i.get.as_ref()),
            ["200", "400", "503"]
        );
        let RefOr::T(kept) = &openapi.paths.paths["/pagos"]
            .post
            .as_ref()
            .unwrap()
            .responses
            .responses["400"]
        else {
            panic!("inline response")
        };
        assert_eq!(kept.description, "campo inválido");
        assert!(openapi.components.unwrap().schemas.contains_key("Problem"));
    }
}
