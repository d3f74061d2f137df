//! Stock and reservations: `inventory.stock`, `inventory.reserve`,
//! `inventory.release`. Reservations are keyed so that a re-run reserves
//! once and a release is safe to repeat.

use std::collections::HashMap;

use parking_lot::Mutex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_service::{Ctx, ErrorCode, Problem};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SkuRef {
    pub sku: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Stock {
    pub sku: String,
    pub available: u32,
    /// Cents per unit.
    pub price: u64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Reserve {
    pub sku: String,
    #[schemars(range(min = 1, max = 1000))]
    pub qty: u32,
    #[schemars(length(min = 1, max = 200))]
    pub key: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Reserved {
    pub sku: String,
    pub qty: u32,
    /// Cents for the whole reservation.
    pub total: u64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Release {
    /// The key of the reservation to release.
    pub key: String,
}

#[derive(Default)]
struct Shelves {
    stock: HashMap<String, (u32, u64)>,
    reservations: HashMap<String, (String, u32)>,
}

/// The inventory service, seeded with `apple` (100 at 0.50) and `pear`
/// (10 at 1.20).
pub struct Inventory {
    state: Mutex<Shelves>,
}

impl Default for Inventory {
    fn default() -> Inventory {
        let mut s = Shelves::default();
        s.stock.insert("apple".into(), (100, 50));
        s.stock.insert("pear".into(), (10, 120));
        Inventory {
            state: Mutex::new(s),
        }
    }
}

#[weir_service::service(
    name = "inventory",
    version = "1.0.0",
    description = "Stock and reservations"
)]
impl Inventory {
    #[weir(idempotent)]
    async fn stock(&self, _ctx: Ctx, req: SkuRef) -> Result<Stock, Problem> {
        let s = self.state.lock();
        let (available, price) = *s
            .stock
            .get(&req.sku)
            .ok_or_else(|| Problem::new(ErrorCode::NotFound, format!("no sku `{}`", req.sku)))?;
        Ok(Stock {
            sku: req.sku,
            available,
            price,
        })
    }

    /// Takes `qty` off the shelf; refused (403) when there is not enough.
    #[weir(idempotent)]
    async fn reserve(&self, _ctx: Ctx, req: Reserve) -> Result<Reserved, Problem> {
        let mut s = self.state.lock();
        let already = s.reservations.contains_key(&req.key);
        let (available, price) = s
            .stock
            .get_mut(&req.sku)
            .ok_or_else(|| Problem::new(ErrorCode::NotFound, format!("no sku `{}`", req.sku)))?;
        if !already {
            if *available < req.qty {
                return Err(Problem::new(
                    ErrorCode::Forbidden,
                    format!("only {available} `{}` left", req.sku),
                ));
            }
            *available -= req.qty;
        }
        let total = *price * u64::from(req.qty);
        s.reservations.insert(req.key, (req.sku.clone(), req.qty));
        Ok(Reserved {
            sku: req.sku,
            qty: req.qty,
            total,
        })
    }

    /// Puts a reservation back; unknown or released keys are a no-op.
    #[weir(idempotent)]
    async fn release(&self, _ctx: Ctx, req: Release) -> Result<(), Problem> {
        let mut s = self.state.lock();
        if let Some((sku, qty)) = s.reservations.remove(&req.key)
            && let Some((available, _)) = s.stock.get_mut(&sku)
        {
            *available += qty;
        }
        Ok(())
    }
}
