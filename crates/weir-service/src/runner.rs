//! Runs one or many services in a process until SIGTERM/SIGINT, then
//! drains them all.

use std::sync::Arc;

use crate::error::SetupError;
use crate::server::{ServiceBuilder, ServiceHandle};
use crate::transport::Transport;

/// Starts services and drains them on a signal.
pub struct Runner {
    transport: Arc<dyn Transport>,
    services: Vec<ServiceBuilder>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("services", &self.services.len())
            .finish()
    }
}

/// Running services (readiness and drain).
#[derive(Debug)]
pub struct Running {
    pub services: Vec<ServiceHandle>,
}

impl Running {
    /// Ready when every service is subscribed and none is draining.
    pub fn is_ready(&self) -> bool {
        self.services.iter().all(ServiceHandle::is_ready)
    }

    /// Drains every service concurrently; true if all finished in time.
    pub async fn drain(&self) -> bool {
        futures::future::join_all(self.services.iter().map(|s| s.drain()))
            .await
            .into_iter()
            .all(|ok| ok)
    }
}

impl Runner {
    pub fn new(transport: Arc<dyn Transport>) -> Runner {
        Runner {
            transport,
            services: Vec::new(),
        }
    }

    pub fn service(mut self, s: ServiceBuilder) -> Runner {
        self.services.push(s);
        self
    }

    /// Starts every service.
    pub async fn start(self) -> Result<Running, SetupError> {
        let mut services = Vec::new();
        for s in self.services {
            services.push(s.start(self.transport.clone()).await?);
        }
        Ok(Running { services })
    }

    /// Starts, waits for SIGTERM or Ctrl-C, drains.
    pub async fn run(self) -> Result<(), SetupError> {
        let running = self.start().await?;
        tracing::info!(services = running.services.len(), "services running");
        shutdown_signal().await;
        tracing::info!("draining");
        if !running.drain().await {
            tracing::warn!("drain timed out with work in flight");
        }
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
