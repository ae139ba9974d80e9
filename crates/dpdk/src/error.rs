//! The crate's error type.

use std::ffi::CStr;

use dpdk_sys as sys;

/// Everything that can go wrong in the safe layer.
///
/// Codes are the ones DPDK reports: `rte_errno` values for EAL and mempool
/// calls, negative errno values returned by ethdev calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// EAL initialisation failed, or the EAL is not in a state that allows the call.
    #[error("EAL: {msg} (errno {code})")]
    Eal { code: i32, msg: String },
    /// A mempool could not be created.
    #[error("mempool: {0}")]
    Mempool(String),
    /// An ethdev call on a port failed.
    #[error("port {port}: {op} failed: {} ({code})", strerror(*code))]
    Port {
        port: u16,
        op: &'static str,
        code: i32,
    },
    /// A named DPDK object (port, ...) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// `rte_eal_remote_launch` refused the job.
    #[error("launch on lcore {lcore} failed: {} ({code})", strerror(*code))]
    Launch { lcore: u32, code: i32 },
    /// An rte_flow rule was refused (commonly: the device has no rte_flow support).
    #[error("port {port}: {op} failed: {msg} ({code})")]
    Flow {
        port: u16,
        op: &'static str,
        code: i32,
        msg: String,
    },
    /// The caller passed something DPDK (or this layer) cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArg(String),
}

/// Crate result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// The current thread's `rte_errno`.
pub fn rte_errno() -> i32 {
    // SAFETY: reads a thread-local integer through a C helper; no preconditions.
    unsafe { sys::cgnat_rte_errno() }
}

/// DPDK's description of an errno value; accepts the negative values ethdev
/// returns as well as positive `rte_errno` values.
pub fn strerror(code: i32) -> String {
    let code = code.checked_abs().unwrap_or(i32::MAX);
    // SAFETY: rte_strerror accepts any integer and returns a pointer to a
    // NUL-terminated string that is either static or in a thread-local
    // buffer; it is copied out before any other DPDK call on this thread.
    let p = unsafe { sys::rte_strerror(code) };
    if p.is_null() {
        return format!("error {code}");
    }
    // SAFETY: non-null, NUL-terminated, valid until the next rte_strerror
    // call on this thread (see above).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// `Error::Eal` built from the current `rte_errno`, prefixed with what failed.
pub(crate) fn eal_error(what: &str) -> Error {
    let code = rte_errno();
    Error::Eal {
        code,
        msg: format!("{what}: {}", strerror(code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_error_names_port_op_and_reason() {
        let e = Error::Port {
            port: 3,
            op: "rte_eth_dev_start",
            code: -libc::EINVAL,
        };
        let s = e.to_string();
        assert!(s.starts_with("port 3: rte_eth_dev_start failed: "), "{s}");
        assert!(s.contains("Invalid argument"), "{s}");
        assert!(s.ends_with(&format!("({})", -libc::EINVAL)), "{s}");
    }

    #[test]
    fn strerror_knows_dpdk_specific_codes() {
        // E_RTE_NO_CONFIG is DPDK's own errno space, not libc's.
        let s = strerror(sys::E_RTE_NO_CONFIG as i32);
        assert!(s.to_lowercase().contains("config"), "{s}");
        assert_eq!(strerror(-libc::ENOMEM), strerror(libc::ENOMEM));
    }
}
