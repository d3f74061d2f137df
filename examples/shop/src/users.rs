//! Users and their credit: `users.get`, `users.charge`, `users.refund`.
//! Charges are keyed (the saga step's idempotency key), so a step re-run
//! after an orchestrator crash charges once.

use std::collections::HashMap;

use parking_lot::Mutex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_service::{Ctx, ErrorCode, Problem};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct User {
    pub id: String,
    pub name: String,
    /// Most a user may have charged at once, in cents.
    pub credit_limit: u64,
    /// Charged so far, in cents.
    pub charged: u64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct UserRef {
    pub user: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Charge {
    pub user: String,
    /// Cents.
    pub amount: u64,
    /// Makes a retried charge a no-op.
    #[schemars(length(min = 1, max = 200))]
    pub key: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Refund {
    /// The key of the charge to undo.
    pub key: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Charged {
    pub user: String,
    pub amount: u64,
    pub remaining_credit: u64,
}

#[derive(Default)]
struct Ledger {
    users: HashMap<String, User>,
    /// charge key → (user, amount)
    charges: HashMap<String, (String, u64)>,
}

/// The users service, seeded with `alice` (credit 100.00) and `bob` (20.00).
pub struct Users {
    state: Mutex<Ledger>,
}

impl Default for Users {
    fn default() -> Users {
        let mut l = Ledger::default();
        for (id, name, limit) in [("alice", "Alice", 10_000), ("bob", "Bob", 2_000)] {
            l.users.insert(
                id.into(),
                User {
                    id: id.into(),
                    name: name.into(),
                    credit_limit: limit,
                    charged: 0,
                },
            );
        }
        Users {
            state: Mutex::new(l),
        }
    }
}

#[weir_service::service(
    name = "users",
    version = "1.0.0",
    description = "Users and their credit"
)]
impl Users {
    #[weir(idempotent)]
    async fn get(&self, _ctx: Ctx, req: UserRef) -> Result<User, Problem> {
        self.state
            .lock()
            .users
            .get(&req.user)
            .cloned()
            .ok_or_else(|| Problem::new(ErrorCode::NotFound, format!("no user `{}`", req.user)))
    }

    /// Charges `amount` against the credit limit; refused (403) past it.
    #[weir(idempotent)]
    async fn charge(&self, _ctx: Ctx, req: Charge) -> Result<Charged, Problem> {
        let mut l = self.state.lock();
        let already = l.charges.contains_key(&req.key);
        let user = l
            .users
            .get_mut(&req.user)
            .ok_or_else(|| Problem::new(ErrorCode::NotFound, format!("no user `{}`", req.user)))?;
        if !already {
            if user.charged + req.amount > user.credit_limit {
                return Err(Problem::new(
                    ErrorCode::Forbidden,
                    format!(
                        "over the credit limit: {} + {} > {}",
                        user.charged, req.amount, user.credit_limit
                    ),
                ));
            }
            user.charged += req.amount;
        }
        let reply = Charged {
            user: user.id.clone(),
            amount: req.amount,
            remaining_credit: user.credit_limit - user.charged,
        };
        l.charges.insert(req.key, (req.user, req.amount));
        Ok(reply)
    }

    /// Undoes a charge; unknown or already refunded keys are a no-op.
    #[weir(idempotent)]
    async fn refund(&self, _ctx: Ctx, req: Refund) -> Result<(), Problem> {
        let mut l = self.state.lock();
        if let Some((user, amount)) = l.charges.remove(&req.key)
            && let Some(u) = l.users.get_mut(&user)
        {
            u.charged = u.charged.saturating_sub(amount);
        }
        Ok(())
    }
}
