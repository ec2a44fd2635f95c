//! How a panic the module caught shows: the line its panic hook writes in the server log
//! (`src/guard.rs`). Shared, without the `servers` feature, by the servers' `Drop` (which
//! fails the test that caused one) and the fuzz target `restore`.

/// What the module's panic hook writes to the server log when a guard stops a panic
/// (`src/guard.rs`): the command answered `ERR internal error`, or a callback a neutral value.
pub const CAUGHT_PANIC: &str = "ratelimit: internal error";

/// The first log line that reports a panic the module caught, if any.
pub fn caught_panic(log: &str) -> Option<&str> {
    log.lines().find(|line| line.contains(CAUGHT_PANIC))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_in_the_log_is_found() {
        let panic =
            "1:M 03 Dec 2026 14:00:01.000 # ratelimit: internal error: panicked at x.rs:1:1";
        let log = format!("1:M 03 Dec 2026 14:00:00.000 * Ready to accept connections\n{panic}\n");
        assert_eq!(caught_panic(&log), Some(panic));
        assert_eq!(caught_panic("1:M * Ready to accept connections\n"), None);
    }
}
