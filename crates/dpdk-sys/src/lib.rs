//! Raw FFI bindings to the DPDK installed on the build machine (found with
//! `pkg-config libdpdk`, at least 22.11, Debian's `libdpdk-dev`).
//!
//! This crate is bindings only: everything is `unsafe` and mirrors the C API.
//! Use the `dpdk` crate for the safe layer.
//!
//! - DPDK's fast path is mostly `static inline` C (`rte_eth_rx_burst`,
//!   `rte_pktmbuf_alloc`, `rte_ring_enqueue_burst`, ...). bindgen's
//!   `wrap_static_fns` emits a one-line C wrapper per such function, compiled
//!   into this crate; the Rust declarations keep the C names and link to the
//!   wrappers, so callers cannot tell the difference except for one extra
//!   call (no cross-language inlining).
//! - Macros are not functions: `rte_errno` is read with [`cgnat_rte_errno`],
//!   `rte_pktmbuf_mtod` is `buf_addr + data_off` on the Rust side, and the RSS
//!   and offload masks built with `RTE_BIT64` are exported as `cgnat_*`
//!   constants from a small C file.
//! - The shared DPDK libraries are linked; poll-mode drivers are not. EAL loads
//!   them itself from Debian's plugin directory during `rte_eal_init`.
//!
//! Limitations: the bindings describe exactly the installed DPDK; struct
//! layouts change between DPDK releases, so a binary must run against the
//! same ABI it was built with.

#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]
#![allow(
    dead_code,
    improper_ctypes,
    unnecessary_transmutes,
    unsafe_op_in_unsafe_fn
)]
#![allow(clippy::all, clippy::pedantic, clippy::nursery)]
#![allow(rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
