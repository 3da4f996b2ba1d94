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
        crate::list_pools,
        crate::events::list_events,
        crate::cluster_status,
        crate::deploy,
        crate::destroy,
        crate::extend,
        crate::accounts::cluster_token,
        crate::accounts::jwks,
        crate::accounts::login,
        crate::accounts::github_login,
        crate::accounts::refresh,
        crate::accounts::logout,
        crate::accounts::whoami,
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
        types::ExtendRequest,
        types::ClusterStatus,
        types::ClusterList,
        types::Event,
        types::EventList,
        types::PoolList,
        types::PoolView,
        types::InstanceShape,
        types::SpotPrice,
        types::NodeStatus,
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
    )),
    modifiers(&BearerAuth),
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

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", security(()), responses((status = 200, description = "OpenAPI 3.1 document")))]
pub(crate) async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
