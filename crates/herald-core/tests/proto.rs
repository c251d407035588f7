//! Guards the checked-in protobuf code: regenerates it from `proto/` with a pure-Rust compiler
//! (no `protoc` needed) and fails if it differs. `HERALD_BLESS=1 cargo test -p herald-core --test
//! proto` rewrites the checked-in file after a schema change.

use std::path::PathBuf;

#[test]
fn generated_code_matches_proto_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let proto_dir = root.join("proto");
    let files = [
        "herald/v1/event.proto",
        "herald/v1/subscription.proto",
        "herald/v1/dead_letter.proto",
        "herald/v1/stats.proto",
    ];
    let descriptors = protox::compile(files, [&proto_dir]).expect("the .proto files compile");

    let out = tempdir();
    prost_build::Config::new()
        .out_dir(&out)
        .btree_map(["."])
        .compile_fds(descriptors)
        .expect("prost-build generates code");
    let generated = std::fs::read_to_string(out.join("herald.v1.rs")).unwrap();
    let _ = std::fs::remove_dir_all(&out);

    let checked_in_path = root.join("crates/herald-core/src/proto/herald.v1.rs");
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    if std::env::var_os("HERALD_BLESS").is_some() {
        std::fs::write(&checked_in_path, &generated).unwrap();
        return;
    }
    assert!(
        checked_in == generated,
        "{} is out of date with proto/; rerun with HERALD_BLESS=1",
        checked_in_path.display()
    );
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
