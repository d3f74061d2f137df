//! `GET /openapi.json` lists the discovered endpoints with their contract
//! schemas, problem responses and the configured security schemes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::{http, jwt_layer, start, token};
use weir_gateway::GatewayConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_discovered_endpoints() {
    let env = start(GatewayConfig::default(), jwt_layer()).await;
    let doc: Value = http()
        .get(format!("{}/openapi.json", env.base))
        .bearer_auth(token("ana", "acme", &[]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for ep in ["divide", "slow", "whoami", "lookup"] {
        let op = &doc["paths"][format!("/api/calc/{ep}")]["post"];
        assert_eq!(op["operationId"], format!("calc.{ep}"), "{op}");
        assert_eq!(
            op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/calc.{ep}.Request")
        );
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/calc.{ep}.Response")
        );
        assert_eq!(
            op["responses"]["504"]["$ref"],
            "#/components/responses/Problem"
        );
    }
    assert_eq!(
        doc["paths"]["/api/calc/divide"]["post"]["x-weir-idempotent"],
        true
    );
    let schemas = &doc["components"]["schemas"];
    let req = &schemas["calc.divide.Request"];
    assert_eq!(req["properties"]["a"]["type"], "integer");
    assert!(req["required"].as_array().unwrap().iter().any(|r| r == "b"));
    assert_eq!(
        schemas["calc.divide.Response"]["properties"]["quotient"]["type"],
        "integer"
    );
    assert!(schemas["Problem"]["properties"]["code"].is_object());
    // No `$ref` points into a `$defs` that OpenAPI cannot resolve.
    assert!(!doc.to_string().contains("#/$defs/"));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));
}
