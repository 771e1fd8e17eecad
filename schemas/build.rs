//! Compiles `proto/bulkhead/v1/*.proto` with protox (pure Rust, so building needs no
//! system `protoc`) and generates the prost types into `$OUT_DIR/bulkhead.v1.rs`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from("proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(proto_dir.join("bulkhead/v1"))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "proto"));
    files.sort();
    println!("cargo:rerun-if-changed=proto");

    let descriptors = protox::compile(&files, [&proto_dir])?;
    prost_build::Config::new()
        // BTreeMap keeps map fields sorted, so encoding is deterministic: the policy content
        // hash depends on it.
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
