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
        crate::cluster_status,
        crate::deploy,
        crate::destroy,
        serve,
    ),
    components(schemas(
        types::DeployRequest,
        types::ClusterStatus,
        types::ClusterList,
        types::NodeStatus,
        types::ClusterState,
        types::NodeState,
        types::ErrorBody,
        types::Health,
    ))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document")))]
pub(crate) async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
