use axum::Json;
use utoipa::OpenApi;

use flotilla_api_types as types;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flotilla",
        description = "Provision named clusters of compute nodes"
    ),
    paths(
        crate::healthz,
        crate::metrics,
        crate::list_clusters,
        crate::pools::list_pools,
        crate::events::list_events,
        crate::jobs::submit_job,
        crate::jobs::list_jobs,
        crate::jobs::get_job,
        crate::jobs::cancel_job,
        crate::jobs::job_log,
        crate::jobs::job_files,
        crate::jobs::job_file,
        crate::jobs::attempt_file,
        crate::jobs::attempt_work,
        crate::jobs::attempt_agent,
        crate::jobs::warm_assignment,
        crate::jobs::list_templates,
        crate::jobs::run_template,
        crate::notify::list_subscriptions,
        crate::notify::add_subscription,
        crate::notify::remove_subscription,
        crate::notify::enable_subscription,
        crate::notify::test_subscription,
        crate::notify::list_deliveries,
        crate::schedules::list_schedules,
        crate::schedules::create_schedule,
        crate::schedules::get_schedule,
        crate::schedules::delete_schedule,
        crate::schedules::pause_schedule,
        crate::schedules::resume_schedule,
        crate::jobs::attempt_report,
        crate::cluster_status,
        crate::deploy,
        crate::destroy,
        crate::extend,
        crate::nodes::logs,
        crate::pools::pool_errors,
        crate::pools::apply_pool,
        crate::pools::get_pool,
        crate::pools::retire_pool,
        crate::pools::pool_history,
        crate::pools::get_rollout,
        crate::pools::pause_rollout,
        crate::pools::resume_rollout,
        crate::pools::schema_index,
        crate::pools::pool_schema,
        crate::pools::shared_schema,
        crate::pools::write_shared_config,
        crate::pools::get_shared_config,
        crate::pools::list_shared_configs,
        crate::nodes::exec,
        crate::accounts::cluster_token,
        crate::accounts::jwks,
        crate::accounts::login,
        crate::accounts::github_login,
        crate::accounts::refresh,
        crate::accounts::logout,
        crate::accounts::whoami,
        crate::accounts::list_keys,
        crate::accounts::rotate_key,
        crate::accounts::retire_key,
        crate::accounts::list_users,
        crate::accounts::create_user,
        crate::accounts::get_user,
        crate::accounts::update_user,
        crate::accounts::delete_user,
        crate::orgs::capacity,
        crate::orgs::withdraw_capacity,
        crate::orgs::list_orgs,
        crate::orgs::create_org,
        crate::orgs::get_org,
        crate::orgs::update_org,
        crate::orgs::request_membership,
        crate::orgs::approve_membership,
        crate::orgs::refuse_membership,
        crate::orgs::set_member_role,
        crate::orgs::remove_member,
        crate::orgs::credit,
        crate::orgs::ledger,
        crate::orgs::costs,
        crate::orgs::usage,
        serve,
    ),
    components(schemas(
        types::DeployRequest,
        types::WorkloadSpec,
        types::ExtendRequest,
        types::NodeLogs,
        types::PoolErrorList,
        types::PoolErrorView,
        types::PoolDetail,
        types::PoolApplied,
        types::ClusterReplacement,
        types::PoolRollout,
        types::RolloutPause,
        types::RolloutStop,
        types::PoolVersion,
        types::PoolHistory,
        types::SchemaIndex,
        types::SchemaEntry,
        types::Problem,
        types::SharedConfigRef,
        types::SharedConfigRequest,
        types::SharedConfigView,
        types::SharedConfigList,
        types::ExecRequest,
        types::ExecResponse,
        types::ClusterStatus,
        types::ClusterError,
        types::SigningKeyList,
        types::SigningKeyView,
        types::ClusterList,
        types::Event,
        types::EventList,
        types::PoolList,
        types::PoolView,
        types::PoolTypeView,
        types::InstanceShape,
        types::SpotPrice,
        types::NodeStatus,
        types::ClusterRollout,
        types::ClusterState,
        types::NodeState,
        types::ErrorBody,
        types::Health,
        types::Level,
        types::LoginRequest,
        types::GithubLoginRequest,
        types::RefreshRequest,
        types::TokenResponse,
        types::ClusterTokenResponse,
        types::CreateUserRequest,
        types::UpdateUserRequest,
        types::UserView,
        types::UserList,
        types::WhoAmI,
        types::OrgClusterStatus,
        types::CapacityRequestStatus,
        types::CapacityRequest,
        types::CapacityResponse,
        types::CreateOrgRequest,
        types::UpdateOrgRequest,
        types::OrgMember,
        types::PendingMember,
        types::OrgSettingsView,
        types::OrgBudgetView,
        types::OrgForecast,
        types::OrgEventView,
        types::OrgView,
        types::OrgSummary,
        types::OrgList,
        types::MembershipRequestResponse,
        types::MemberRoleRequest,
        types::CreditRequest,
        types::LedgerEntryView,
        types::Ledger,
        types::CostRowView,
        types::Costs,
        types::NodeUsageView,
        types::Usage,
        types::JobView,
        types::QueuePosition,
        types::AttemptView,
        types::JobList,
        types::AttemptWork,
        types::WarmAssignment,
        types::KeptFileView,
        types::JobFiles,
        types::AgentReport,
        types::LogLine,
        types::AgentAnswer,
        types::RunTemplateRequest,
        types::TemplateList,
        types::SubscriptionRequest,
        types::SubscriptionView,
        types::SubscriptionList,
        types::DeliveryView,
        types::DeliveryList,
        types::ScheduleRequest,
        types::ScheduleView,
        types::ScheduleList,
    )),
    modifiers(&BearerAuth, &Conformance),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// Declares the bearer scheme every authenticated route uses.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from /api/v1/auth/login"))
                    .build(),
            ),
        );
    }
}

/// Completes every operation from what the server does to all of them, so
/// the document lists every status a client can get: the access layer's
/// (401, 403 and 429, and optional authentication where anonymous callers
/// are served), the body extractor's (400 unreadable JSON, 415 not JSON,
/// 422 invalid values), path names' rules (the domain constructors'
/// patterns; 404 for what does not exist), and 503 for changes while the
/// server shuts down.
struct Conformance;

impl utoipa::Modify for Conformance {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use crate::access::{Access, ROUTES};
        for (method, path, access) in ROUTES {
            let Some(item) = openapi.paths.paths.get_mut(*path) else {
                continue;
            };
            let operation = match *method {
                "GET" => item.get.as_mut(),
                "PUT" => item.put.as_mut(),
                "POST" => item.post.as_mut(),
                "DELETE" => item.delete.as_mut(),
                "PATCH" => item.patch.as_mut(),
                _ => None,
            };
            let Some(op) = operation else { continue };
            match access {
                Access::Open => continue,
                Access::SignIn => {}
                Access::Attempt => add(op, "401", "Not the token of this attempt"),
                Access::Rule(_) => {
                    // Anonymous callers are served too.
                    op.security = Some(vec![
                        utoipa::openapi::security::SecurityRequirement::default(),
                        utoipa::openapi::security::SecurityRequirement::new(
                            "bearer",
                            Vec::<String>::new(),
                        ),
                    ]);
                    add(op, "401", "The token is invalid, expired or revoked");
                }
                Access::SignedIn(_) => {
                    add(op, "401", "No token, or one invalid, expired or revoked");
                    add(op, "403", "The caller may not do this");
                }
            }
            add(op, "429", "Too many requests; see Retry-After");
            if op.request_body.is_some() {
                add(op, "400", "The body is not readable JSON");
                add(op, "415", "The body is not application/json");
                add(op, "422", "A value in the body is not valid");
            }
            if *method != "GET" {
                add(op, "503", "The server is shutting down; try again");
            }
            let names = path.contains('{');
            let queries = op
                .parameters
                .iter()
                .flatten()
                .any(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Query);
            if names || queries {
                add(op, "400", "A query parameter is not readable");
                add(op, "422", "A name in the path or query is not valid");
            }
            if names {
                add(op, "404", "Nothing of that name");
            }
            for param in op.parameters.iter_mut().flatten() {
                if let Some(schema) = name_schema(&param.name) {
                    param.schema = Some(schema);
                }
            }
        }
    }
}

/// Adds `status` to `op`'s responses unless it documents it already.
fn add(op: &mut utoipa::openapi::path::Operation, status: &str, description: &str) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
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

/// The schema of a name in a path (or the `cluster` filter), from the rule
/// its constructor checks.
fn name_schema(param: &str) -> Option<utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>> {
    use flotilla_domain::{ClusterName, PoolName, Username};
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let (pattern, max) = match param {
        "cluster" | "org" => (ClusterName::PATTERN, ClusterName::MAX_LEN),
        "user" | "username" => (Username::PATTERN, Username::MAX_LEN),
        "pool" | "name" => (PoolName::PATTERN, PoolName::MAX_LEN),
        _ => return None,
    };
    Some(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .min_length(Some(1))
            .max_length(Some(max))
            .into(),
    )
}

/// This document, with this server's limits on time-to-live and nodes.
#[utoipa::path(get, path = "/api/v1/openapi.json", security(()), responses((status = 200, description = "OpenAPI 3.1 document")))]
pub(crate) async fn serve(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
) -> Json<serde_json::Value> {
    let pools: Vec<String> = state
        .engine
        .pools()
        .iter()
        .map(ToString::to_string)
        .collect();
    let catalog = state.control.catalog();
    let pool_schemas: Vec<serde_json::Value> = catalog
        .drivers()
        .filter_map(|(driver, _)| catalog.schema(driver).cloned())
        .collect();
    let shared_schemas: Vec<(String, serde_json::Value)> = catalog
        .drivers()
        .flat_map(|(driver, _)| {
            catalog
                .shared_kinds(driver)
                .into_iter()
                .filter_map(move |kind| {
                    catalog
                        .shared_schema(driver, kind)
                        .map(|s| (format!("{driver}/{kind}"), s.clone()))
                })
        })
        .collect();
    Json(document(
        &state.engine.config().limits,
        &pools,
        &pool_schemas,
        &shared_schemas,
    ))
}

/// The API document as this server answers it: [`ApiDoc`] with the bounds
/// `limits` puts on every time-to-live and node count, the names of its
/// `pools`, the rules of names inside lists and of the levels an account
/// may be given, and a pool's body: one of `pool_schemas` (a pool on each
/// configured driver, as `/api/v1/schemas/{driver}/pool` serves it), and
/// a shared config's: one of the published kinds (`DRIVER/KIND`) and a
/// value of one of `shared_schemas`.
pub fn document(
    limits: &flotilla_domain::Limits,
    pools: &[String],
    pool_schemas: &[serde_json::Value],
    shared_schemas: &[(String, serde_json::Value)],
) -> serde_json::Value {
    use flotilla_domain::{ClusterName, Level};
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
    let schemas = &mut doc["components"]["schemas"];
    let name = serde_json::json!({
        "type": "string",
        "pattern": ClusterName::PATTERN,
        "maxLength": ClusterName::MAX_LEN,
    });
    for (schema, field) in [
        ("CreateOrgRequest", "owners"),
        ("CreateUserRequest", "grants"),
        ("UpdateUserRequest", "grants"),
    ] {
        schemas[schema]["properties"][field]["items"] = name.clone();
    }
    // An account is never created or set at level anonymous.
    let levels: Vec<&str> = Level::ALL
        .iter()
        .filter(|l| **l != Level::Anonymous)
        .map(|l| l.as_str())
        .collect();
    schemas["CreateUserRequest"]["properties"]["level"] =
        serde_json::json!({"type": "string", "enum": levels});
    let mut optional = levels
        .iter()
        .map(|l| serde_json::json!(l))
        .collect::<Vec<_>>();
    optional.push(serde_json::Value::Null);
    schemas["UpdateUserRequest"]["properties"]["level"] =
        serde_json::json!({"type": ["string", "null"], "enum": optional});
    for schema in ["DeployRequest", "CreateOrgRequest", "UpdateOrgRequest"] {
        let pool = &mut schemas[schema]["properties"]["pool"];
        if let Some(p) = pool.as_object_mut() {
            let mut names: Vec<serde_json::Value> =
                pools.iter().map(|p| serde_json::json!(p)).collect();
            names.push(serde_json::Value::Null);
            p.insert("enum".into(), serde_json::Value::Array(names));
        }
    }
    let ttl = serde_json::json!({
        // Whole seconds the server accepts: a fractional minimum rounds up.
        "minimum": limits.min_ttl.as_millis().div_ceil(1000).max(1) as u64,
        "maximum": limits.max_ttl.as_secs(),
    });
    for (schema, field, bounds) in [
        ("DeployRequest", "time_to_live", &ttl),
        ("ExtendRequest", "time_to_live", &ttl),
        ("CapacityRequest", "time_to_live", &ttl),
        (
            "DeployRequest",
            "node_capacity",
            &serde_json::json!({"minimum": 1, "maximum": limits.max_nodes}),
        ),
    ] {
        let property = &mut doc["components"]["schemas"][schema]["properties"][field];
        if let (Some(p), Some(b)) = (property.as_object_mut(), bounds.as_object()) {
            p.extend(b.clone());
        }
    }
    let part = |schema: &serde_json::Value| {
        let mut schema = schema.clone();
        if let Some(object) = schema.as_object_mut() {
            // Identifiers of a document of its own, not of a part.
            object.remove("$schema");
            object.remove("$id");
        }
        schema
    };
    let bodies: Vec<serde_json::Value> = pool_schemas.iter().map(part).collect();
    let shared = &mut doc["components"]["schemas"]["SharedConfigRequest"]["properties"];
    if shared.is_object() {
        let mut kinds: Vec<serde_json::Value> = shared_schemas
            .iter()
            .map(|(kind, _)| serde_json::json!(kind))
            .collect();
        kinds.push(serde_json::Value::Null);
        shared["schema"] = serde_json::json!({"type": ["string", "null"], "enum": kinds});
        shared["value"] = serde_json::json!({
            "anyOf": shared_schemas.iter().map(|(_, s)| part(s)).collect::<Vec<_>>()
        });
    }
    let body = &mut doc["paths"]["/api/v1/pools/{pool}"]["put"]["requestBody"]["content"]
        ["application/json"]["schema"];
    if body.is_object() {
        *body = serde_json::json!({ "oneOf": bodies });
    }
    doc
}
