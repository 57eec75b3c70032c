// Shared by the build scripts of every package that links libtorch (include!d, not a crate):
// gives the package's binaries and test binaries an rpath to the libtorch they were linked
// against, so they run with no `LD_LIBRARY_PATH` set by hand.
//
// - `DEP_TCH_LIBTORCH_LIB` comes from torch-sys (`links = "tch"`), which must therefore be a
//   direct dependency of the package.
// - `SAESCOPE_EXTRA_RPATH` (colon-separated) adds directories, e.g. the GPU machine's libtorch;
//   the dynamic loader skips directories that do not exist, so one binary can carry both.
// - `SAESCOPE_CUDA=1` forces `libtorch_cuda.so` into the link. rustc links with `--as-needed`,
//   which would otherwise drop it (nothing references it by symbol) and CUDA would then report
//   unavailable even on a GPU machine. Such a binary cannot start without the CUDA libraries.

fn emit_libtorch_rpath() {
    println!("cargo:rerun-if-env-changed=SAESCOPE_EXTRA_RPATH");
    println!("cargo:rerun-if-env-changed=SAESCOPE_CUDA");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");

    let mut dirs: Vec<String> = Vec::new();
    let libtorch_lib = std::env::var("DEP_TCH_LIBTORCH_LIB").ok();
    if let Some(lib) = &libtorch_lib {
        dirs.push(lib.clone());
    }
    if let Ok(extra) = std::env::var("SAESCOPE_EXTRA_RPATH") {
        dirs.extend(extra.split(':').filter(|d| !d.is_empty()).map(str::to_owned));
    }
    for dir in &dirs {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }

    if std::env::var("SAESCOPE_CUDA").as_deref() == Ok("1") {
        let has_cuda = libtorch_lib
            .as_deref()
            .map(|lib| std::path::Path::new(lib).join("libtorch_cuda.so").exists())
            .unwrap_or(false);
        if has_cuda {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        } else {
            println!(
                "cargo:warning=SAESCOPE_CUDA=1 but libtorch_cuda.so is not in the libtorch directory: building a CPU-only binary"
            );
        }
    }
}
