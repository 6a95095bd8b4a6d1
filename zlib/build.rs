//! Hands libgit2's build (`DEP_Z_INCLUDE`) the zlib headers that match
//! zlib-rs's C API.

fn main() {
    let include = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    println!("cargo:include={}", include.display());
    println!("cargo:rerun-if-changed=include");
}
