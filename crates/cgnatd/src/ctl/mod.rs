//! cgnatctl's output layer, kept out of the binary's `main` so it can be unit
//! tested (`cargo test -p cgnatd --bin cgnatctl`): [`format`] holds generic
//! text helpers, [`view`] the JSON/YAML shapes and tables of each command.

pub mod format;
pub mod rules;
pub mod view;
