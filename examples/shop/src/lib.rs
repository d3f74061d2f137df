//! The shop: users, inventory, orders and notifications as Weir services
//! over NATS. Placing an order runs a saga (reserve stock → charge →
//! confirm; stock released and the charge refunded when a step fails),
//! notifications consume the order events durably, and the bridge appends
//! them to a Weir stream that anyone can read with curl. See README.md.

pub mod app;
pub mod db;
pub mod inventory;
pub mod notifications;
pub mod orders;
pub mod users;

pub use app::{Shop, ShopConfig};
pub use inventory::{Inventory, InventoryClient};
pub use notifications::{Notifications, NotificationsClient};
pub use orders::{Order, Orders, OrdersClient, PlaceOrder};
pub use users::{Users, UsersClient};
