//! dpdk-sys (work in progress skeleton; replaced by the real crate)
