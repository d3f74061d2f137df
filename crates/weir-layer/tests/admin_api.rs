//! The admin API on a real HTTP listener (127.0.0.1:0): key management per
//! tenant and for operators, problem+json codes, the audit log.
#![cfg(feature = "http")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_layer::admin::{Admin, AdminConfig};
use weir_layer::auth::apikey::NewApiKey;
use weir_layer::principal::AuthError;
use weir_layer::store::LayerStores;
use weir_layer::{LayerConfig, Production, TokenVerifier};

struct Env {
    base: String,
    layer: Production,
    http: reqwest::Client,
    operator: String,
    acme_admin: String,
    acme_writer: String,
}

async fn key(layer: &Production, tenant: &str, subject: &str, role: &str) -> String {
    layer
        .authenticator
        .api_keys()
        .unwrap()
        .create(NewApiKey {
            tenant: tenant.into(),
            subject: subject.into(),
            roles: vec![role.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .token
        .expose()
        .to_owned()
}

async fn start(cfg: LayerConfig) -> Env {
    let stores = LayerStores::memory();
    let layer =
        Production::build(&cfg, Some(stores.keys.clone()), weir_layer::clock::system()).unwrap();
    let admin = Arc::new(Admin::new(
        layer.authenticator.clone(),
        stores.audit.clone(),
        &AdminConfig {
            listen: None,
            operator_tenant: Some("ops".into()),
        },
        weir_layer::clock::system(),
    ));
    let (addr, _task) = weir_layer::admin::spawn("127.0.0.1:0".parse().unwrap(), admin, &layer)
        .await
        .unwrap();
    let (operator, acme_admin, acme_writer) = if cfg.auth.api_keys.enabled {
        (
            key(&layer, "ops", "root", "admin").await,
            key(&layer, "acme", "acme-admin", "admin").await,
            key(&layer, "acme", "acme-ci", "writer").await,
        )
    } else {
        Default::default()
    };
    Env {
        base: format!("http://{addr}"),
        layer,
        http: reqwest::Client::new(),
        operator,
        acme_admin,
        acme_writer,
    }
}

fn keys_config() -> LayerConfig {
    toml::from_str(
        "[auth]\nmode = \"required\"\n[auth.api_keys]\nenabled = true\ncache_ttl_ms = 60000\n",
    )
    .unwrap()
}

impl Env {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-request-id", format!("test-{}", path.len()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, json)
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let (s, _, v) = self
            .call(reqwest::Method::GET, path, Some(token), None)
            .await;
        (s, v)
    }
}

/// Asserts a problem+json answer with `code`.
fn problem(got: (StatusCode, reqwest::header::HeaderMap, Value), status: u16, code: &str) {
    let (s, h, v) = got;
    assert_eq!(s.as_u16(), status, "{v}");
    assert_eq!(
        h.get("content-type").unwrap(),
        "application/problem+json",
        "{v}"
    );
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["status"], status);
    assert!(
        v["correlation_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("test-")),
        "{v}"
    );
}

#[tokio::test]
async fn keys_are_managed_per_tenant_and_every_change_is_audited() {
    let env = start(keys_config()).await;
    use reqwest::Method as M;

    // Credentials and the admin permission are required.
    problem(
        env.call(M::GET, "/admin/v1/keys", None, None).await,
        401,
        "unauthorized",
    );
    problem(
        env.call(M::GET, "/admin/v1/keys", Some(&env.acme_writer), None)
            .await,
        403,
        "forbidden",
    );

    // The operator creates a key for any tenant; the token works at once.
    let (s, _, created) = env
        .call(
            M::POST,
            "/admin/v1/keys",
            Some(&env.operator),
            Some(r#"{"tenant":"beta","subject":"svc","roles":["reader"],"name":"beta reader"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let beta_token = created["token"].as_str().unwrap().to_owned();
    let beta_id = created["key"]["id"].as_str().unwrap().to_owned();
    assert!(
        created["key"].get("secret_hash").is_none(),
        "never the hash"
    );
    let p = env.layer.authenticator.verify(&beta_token).await.unwrap();
    assert_eq!((p.tenant.as_str(), p.subject.as_str()), ("beta", "svc"));

    // A tenant admin manages its own tenant only.
    problem(
        env.call(
            M::POST,
            "/admin/v1/keys",
            Some(&env.acme_admin),
            Some(r#"{"tenant":"beta","subject":"x"}"#),
        )
        .await,
        403,
        "forbidden",
    );
    let (s, _, own) = env
        .call(
            M::POST,
            "/admin/v1/keys",
            Some(&env.acme_admin),
            Some(r#"{"subject":"deploy","roles":["writer"],"expires_at":4102444800}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{own}");
    assert_eq!(own["key"]["tenant"], "acme");
    let acme_id = own["key"]["id"].as_str().unwrap().to_owned();
    let (s, list) = env.get("/admin/v1/keys", &env.acme_admin).await;
    assert_eq!(s, StatusCode::OK);
    let tenants: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants.len(), 3, "{list}");
    assert!(tenants.iter().all(|t| *t == "acme"));
    let (_, foreign) = env.get("/admin/v1/keys?tenant=beta", &env.acme_admin).await;
    assert_eq!(foreign["keys"], json!([]));
    let (_, all) = env.get("/admin/v1/keys", &env.operator).await;
    assert_eq!(all["keys"].as_array().unwrap().len(), 5);
    // Another tenant's key is indistinguishable from a missing one.
    for m in [M::GET, M::DELETE] {
        problem(
            env.call(
                m,
                &format!("/admin/v1/keys/{beta_id}"),
                Some(&env.acme_admin),
                None,
            )
            .await,
            404,
            "api_key_not_found",
        );
    }
    assert!(env.layer.authenticator.verify(&beta_token).await.is_ok());
    let (s, one) = env
        .get(&format!("/admin/v1/keys/{acme_id}"), &env.acme_admin)
        .await;
    assert_eq!(
        (s, one["key"]["subject"].clone()),
        (StatusCode::OK, json!("deploy"))
    );

    // Revocation through the API is effective at once on this node.
    let (s, _, revoked) = env
        .call(
            M::DELETE,
            &format!("/admin/v1/keys/{beta_id}"),
            Some(&env.operator),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{revoked}");
    assert!(revoked["key"]["revoked_at"].as_u64().is_some());
    assert_eq!(
        env.layer.authenticator.verify(&beta_token).await,
        Err(AuthError::Revoked)
    );
    problem(
        env.call(
            M::DELETE,
            "/admin/v1/keys/0000000000000000",
            Some(&env.operator),
            None,
        )
        .await,
        404,
        "api_key_not_found",
    );

    // Malformed requests.
    for body in [
        "{",
        r#"{"subject":"x","admin":true}"#,
        r#"{"subject":""}"#,
        r#"{"subject":"x","tenant":"../etc"}"#,
    ] {
        problem(
            env.call(M::POST, "/admin/v1/keys", Some(&env.operator), Some(body))
                .await,
            400,
            "admin_request_invalid",
        );
    }
    for q in ["limit=0", "limit=100000", "limit=x", "before=zz", "nope=1"] {
        problem(
            env.call(
                M::GET,
                &format!("/admin/v1/audit?{q}"),
                Some(&env.operator),
                None,
            )
            .await,
            400,
            "admin_request_invalid",
        );
    }
    problem(
        env.call(M::PUT, "/admin/v1/keys", Some(&env.operator), None)
            .await,
        405,
        "method_not_allowed",
    );
    problem(
        env.call(M::GET, "/admin/v1/nope", Some(&env.operator), None)
            .await,
        404,
        "route_not_found",
    );

    // The audit log: actor, action, target, tenant, time, request id.
    let (s, audit) = env.get("/admin/v1/audit", &env.operator).await;
    assert_eq!(s, StatusCode::OK);
    let entries = audit["entries"].as_array().unwrap();
    let summary: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["tenant"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("api_key.revoked", "root", "beta"),
            ("api_key.created", "acme-admin", "acme"),
            ("api_key.created", "root", "beta"),
        ]
    );
    assert_eq!(entries[0]["target"], beta_id.as_str());
    assert_eq!(entries[0]["actor_tenant"], "ops");
    assert!(
        entries[0]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("test-")
    );
    assert!(entries[0]["at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(entries[2]["detail"]["roles"], json!(["reader"]));
    // Paging, and a tenant admin sees its own tenant's entries only.
    let (_, page) = env.get("/admin/v1/audit?limit=2", &env.operator).await;
    let next = page["next"].as_str().unwrap();
    let (_, rest) = env
        .get(
            &format!("/admin/v1/audit?limit=2&before={next}"),
            &env.operator,
        )
        .await;
    assert_eq!(rest["entries"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next"], Value::Null);
    let (_, mine) = env.get("/admin/v1/audit", &env.acme_admin).await;
    let mine = mine["entries"].as_array().unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["tenant"], "acme");

    // /metrics and /healthz on the admin listener need no credentials.
    let (s, _, m) = env.call(M::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(m.is_string());
    let (s, _, _) = env.call(M::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn key_endpoints_without_api_keys_answer_409() {
    // auth.mode = "none": the anonymous principal is an operator.
    let env = start(LayerConfig::default()).await;
    use reqwest::Method as M;
    problem(
        env.call(M::GET, "/admin/v1/keys", None, None).await,
        409,
        "api_keys_disabled",
    );
    problem(
        env.call(M::POST, "/admin/v1/keys", None, Some(r#"{"subject":"x"}"#))
            .await,
        409,
        "api_keys_disabled",
    );
    let (s, _, audit) = env.call(M::GET, "/admin/v1/audit", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(audit["entries"], json!([]));
}
