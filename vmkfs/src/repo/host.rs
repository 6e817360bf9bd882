//! The host and user names restic records in snapshots, keys and locks.

/// This machine's name, as restic records it in locks and snapshots.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The user name restic records (`USER`, else `LOGNAME`).
pub fn username() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_default()
}
