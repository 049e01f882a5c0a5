//! No code: this crate exists for its `Cargo.toml`, which pins one dependency feature set for
//! every cargo command in the workspace (see the comment there).
#![forbid(unsafe_code)]
