//! mgmt (work in progress skeleton; replaced by the real crate)
#![forbid(unsafe_code)]
