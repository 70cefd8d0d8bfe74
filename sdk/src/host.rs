//! The `host` import (log, config): the real one inside a component, a thread-local fake
//! when the policy runs natively (unit tests, the server's side-by-side benchmarks).

use crate::Level;

/// Writes a line to the server's log under the policy's name (capped and rate-limited by the
/// host). Natively: kept by the [`testing`](crate::testing) harness, else written to stderr.
pub fn log(level: Level, message: &str) {
    imp::log(level, message);
}

/// The attachment's config bytes (JSON by convention; empty when none was given).
pub fn config() -> Vec<u8> {
    imp::config()
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::guest::bindings::ota::policy::host as wit;
    use crate::Level;

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message);
    }

    pub fn config() -> Vec<u8> {
        wit::config()
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod imp {
    use crate::Level;
    use std::cell::RefCell;

    /// What the native fake host holds for the current thread.
    #[derive(Default)]
    pub(crate) struct Fake {
        pub config: Vec<u8>,
        pub logs: Option<Vec<(Level, String)>>,
    }

    thread_local! {
        pub(crate) static FAKE: RefCell<Fake> = RefCell::new(Fake::default());
    }

    pub fn log(level: Level, message: &str) {
        FAKE.with(|f| match &mut f.borrow_mut().logs {
            Some(logs) => logs.push((level, message.to_owned())),
            None => eprintln!("policy {level:?}: {message}"),
        });
    }

    pub fn config() -> Vec<u8> {
        FAKE.with(|f| f.borrow().config.clone())
    }
}
