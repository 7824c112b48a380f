//! Generates the ttrpc Credentials API from `protos/` with ttrpc's own codegen, which parses
//! .proto files in pure Rust: no `protoc` is needed on the build machine.

use std::path::{Path, PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTO: &str = "protos/credgate/v1/credentials.proto";

fn main() {
    println!("cargo:rerun-if-changed={PROTO}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    Codegen::new()
        .out_dir(&out)
        .input(PROTO)
        .include("protos")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("ttrpc codegen of protos/credgate/v1/credentials.proto");
    for file in ["credentials.rs", "credentials_ttrpc.rs"] {
        strip_inner_attributes(&out.join(file));
    }
}

/// Generated files start with `#![...]` and `//!` lines, which `include!` can't take; the
/// including module carries the equivalent `#[allow]`s instead.
fn strip_inner_attributes(path: &Path) {
    let text = std::fs::read_to_string(path).expect("generated file exists");
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with("#![") && !line.starts_with("//!"))
        .collect();
    std::fs::write(path, kept.join("\n")).expect("rewrite generated file");
}
