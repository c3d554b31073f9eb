//! Whether pod networking is ready: a CNI network config is loaded from `conf_dir`.

use std::sync::Mutex;

use crust_cni::config::ConfigWatcher;

use crate::config::CniConfig;

/// The node's CNI configuration as the Status RPC reports it.
pub struct NetworkState {
    watcher: Mutex<ConfigWatcher>,
}

impl NetworkState {
    /// Watches the configured directory.
    pub fn new(config: &CniConfig) -> Self {
        NetworkState {
            watcher: Mutex::new(ConfigWatcher::new(config.conf_dir.clone())),
        }
    }

    /// Ok when a network config is loaded, else why not. Re-reads the directory only
    /// when its listing or the chosen file changed, so a config added or removed
    /// takes effect without a restart.
    pub fn ready(&self) -> Result<(), String> {
        let mut watcher = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
        watcher.load_if_changed();
        watcher.current().map(|_| ()).map_err(|e| e.to_string())
    }
}
