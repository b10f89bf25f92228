//! Recompiles the gateway when `make console` rebuilds the page it embeds. rust-embed reads
//! `console/dist/` at compile time and cargo tracks the files it included, but not a `dist/`
//! that appears after a build without it, nor files added to it.
fn main() {
    println!("cargo:rerun-if-changed=console/dist");
}
