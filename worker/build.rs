//! Link libtorch so that CUDA stays available and the binaries find it at run time.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    // Nothing in the binary names a symbol of libtorch_cuda.so, so the linker
    // would drop it (--as-needed) and CUDA would be silently unavailable.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&libtorch).join("lib");
        println!("cargo:rustc-link-search=native={}", lib.display());
        // Find libtorch at run time without LD_LIBRARY_PATH (a copied binary
        // on another machine sets LD_LIBRARY_PATH to its own torch/lib).
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
