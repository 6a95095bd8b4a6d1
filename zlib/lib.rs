//! zlib for libgit2, from zlib-rs: linking this crate links `libz-rs-sys`,
//! whose `export-symbols` feature defines zlib's C functions (`inflate`,
//! `deflate`, `crc32`, …) under their own names, where libgit2's objects
//! find them. The Rust API is `libz-rs-sys`'s.

pub use libz_rs_sys::*;
