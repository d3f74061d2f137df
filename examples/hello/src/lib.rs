//! A greeter: one idempotent method with a validated request.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_service::{Ctx, ErrorCode, Problem};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct HelloRequest {
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct HelloReply {
    pub greeting: String,
}

pub struct Greeter {
    pub greeting: String,
}

#[weir_service::service(name = "greeter", version = "1.0.0", description = "Says hello")]
impl Greeter {
    #[weir(idempotent)]
    async fn hello(&self, _ctx: Ctx, req: HelloRequest) -> Result<HelloReply, Problem> {
        if req.name == "nobody" {
            return Err(Problem::new(ErrorCode::NotFound, "nobody is not here"));
        }
        Ok(HelloReply {
            greeting: format!("{}, {}!", self.greeting, req.name),
        })
    }
}
