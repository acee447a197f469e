//! Reloading the configuration: the caller asks (the CLI on SIGHUP, a test directly), the
//! daemon reads the file again off the runtime's threads and, when it is valid, replaces the
//! engine; an invalid one is logged and the running one kept.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::Config;

/// Reads and validates a configuration file, as the caller wants it read (the CLI adds its
/// command-line overrides and permission checks).
pub type ConfigLoader =
    Arc<dyn Fn(&Path) -> Result<Config, Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// [`Config::load`], nothing added.
pub fn plain_loader() -> ConfigLoader {
    Arc::new(|path| Config::load(path).map_err(Into::into))
}

pub(super) struct Reloads {
    /// `None` when nobody can ask (any more).
    requests: Option<mpsc::Receiver<()>>,
    load: ConfigLoader,
}

impl Reloads {
    pub(super) fn new(requests: Option<mpsc::Receiver<()>>, load: ConfigLoader) -> Reloads {
        Reloads { requests, load }
    }

    /// Resolves when a reload is asked for; never, once the asking side is gone.
    pub(super) async fn requested(&mut self) {
        loop {
            match &mut self.requests {
                Some(rx) => match rx.recv().await {
                    Some(()) => return,
                    None => self.requests = None,
                },
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Reads `path` again; `None` (logged) when the new configuration is refused.
    pub(super) async fn load(&self, path: &Path) -> Option<Config> {
        let load = self.load.clone();
        let path = path.to_owned();
        let loaded = tokio::task::spawn_blocking(move || load(&path)).await;
        match loaded {
            Ok(Ok(cfg)) => Some(cfg),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the new configuration is refused; keeping the running one");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the new configuration failed; keeping the running one");
                None
            }
        }
    }
}
