//! Gives this crate's test binaries an rpath to libtorch (see build-support/rpath.rs).

include!("../build-support/rpath.rs");

fn main() {
    emit_libtorch_rpath();
}
