//! The OpenAPI document of the JSON API, generated from the handlers' annotations (utoipa)
//! and served at `GET /api/v1/openapi.json`. `POST /v1/sync` is not in it: its body is the
//! binary protocol of `proto-docs/SYNC-v1.md`.

use axum::Json;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::{api, auth, import, journal, ledger, phones, photos, reports, tasks, workflow};

/// The document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Qiaomen API", description = "Supervisors' and phones' JSON API (zh-CN data)."),
    paths(
        api::me,
        api::org,
        api::household,
        api::review,
        api::resolve,
        api::move_to,
        phones::phones,
        api::grid_households,
        api::grid_export,
        api::devices,
        api::revoke,
        api::retire,
        api::audit,
        workflow::coverage_report,
        reports::coverage_series,
        workflow::orders,
        workflow::order,
        workflow::order_step,
        workflow::create_demand,
        import::import_orders,
        workflow::stats_report,
        workflow::ranking,
        reports::stats_export,
        workflow::refused,
        ledger::list,
        ledger::one,
        ledger::step,
        ledger::export,
        journal::list,
        journal::dispatch,
        journal::track,
        tasks::push_list,
        tasks::lists,
        tasks::list,
        tasks::done,
        tasks::workflow,
        auth::enroll,
        auth::rotate,
        auth::login,
        auth::logout,
        photos::head,
        photos::patch,
        photos::get,
    ),
    components(schemas(api::ExportFormat)),
    modifiers(&BearerAuth, &BodyLimits)
)]
pub struct ApiDoc;

#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A device token (qm_d_…) or a supervisor's session (qm_s_…)",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every operation that takes a body may answer `413 too_large` (the edge's body limit,
/// SYNC-v1 §12.1), whatever its handler says.
#[derive(Debug)]
struct BodyLimits;

impl Modify for BodyLimits {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        for item in openapi.paths.paths.values_mut() {
            for op in [&mut item.post, &mut item.put, &mut item.patch]
                .into_iter()
                .flatten()
            {
                if op.request_body.is_none() {
                    continue;
                }
                op.responses
                    .responses
                    .entry("413".into())
                    .or_insert_with(|| {
                        ResponseBuilder::new()
                            .description("the body is larger than this endpoint takes")
                            .content(
                                "application/json",
                                ContentBuilder::new()
                                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                                    .build(),
                            )
                            .build()
                            .into()
                    });
            }
        }
    }
}

/// `GET /api/v1/openapi.json`.
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
