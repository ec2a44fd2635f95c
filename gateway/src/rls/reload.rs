//! The policies in force, and their reload: the files are read every second, and when their
//! text changed they are parsed and, if every file is valid, replace the policies at once; a
//! file that does not parse is refused with a log line naming it and its problem, and the
//! previous policies stay.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::policy::{Policies, PolicyError, read_files};

/// How often the files are read.
pub const POLL: Duration = Duration::from_secs(1);

/// The policies in force, shared by the service and the reload task.
pub struct Current {
    policies: RwLock<Arc<Policies>>,
}

impl Current {
    /// Loads `path` once: a file that does not parse stops the start.
    pub fn load(path: &Path) -> Result<(Arc<Current>, Files), PolicyError> {
        let files = read_files(path)?;
        let policies = parse(&files)?;
        let current = Arc::new(Current {
            policies: RwLock::new(Arc::new(policies)),
        });
        Ok((current, files))
    }

    /// The policies now (a request keeps the ones it started with).
    pub fn get(&self) -> Arc<Policies> {
        Arc::clone(&self.policies.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn set(&self, policies: Policies) {
        *self
            .policies
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(policies);
    }
}

/// The files read: (path, text).
pub type Files = Vec<(PathBuf, String)>;

fn parse(files: &Files) -> Result<Policies, PolicyError> {
    Policies::from_texts(files.iter().map(|(p, t)| (p.as_path(), t.as_str())))
}

/// Applies changes of `path` to `current` until the task is dropped; `seen` is what was
/// loaded at start.
pub async fn watch(path: PathBuf, current: Arc<Current>, mut seen: Files) {
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_files(&path)).await
        };
        let files = match read {
            Ok(Ok(files)) => files,
            Ok(Err(e)) => {
                let text = e.to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::error!("policy files unreadable, the previous policies stay: {e}");
                    last_error = Some(text);
                }
                continue;
            }
            Err(_) => continue,
        };
        if files == seen {
            continue;
        }
        match parse(&files) {
            Ok(policies) => {
                let mut domains: Vec<&str> = policies.domains().collect();
                domains.sort_unstable();
                tracing::info!(?domains, "policy files reloaded from {}", path.display());
                current.set(policies);
                last_error = None;
            }
            Err(e) => {
                tracing::error!("policy file refused, the previous policies stay: {e}");
                last_error = Some(e.to_string());
            }
        }
        seen = files;
    }
}
