//! The committed header `include/shmport.h` is what cbindgen (the pinned version)
//! makes of this crate now. `SHMPORT_BLESS=1` rewrites it instead of failing.

use std::path::Path;

#[test]
fn header_is_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    let bindings =
        cbindgen::Builder::new().with_crate(dir).with_config(config).generate().expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = dir.join("include/shmport.h");
    if std::env::var_os("SHMPORT_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write include/shmport.h");
        println!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is not what cbindgen makes of ffi/src now; regenerate it with\n    \
         SHMPORT_BLESS=1 cargo test -p shmport-ffi --test header\nand commit it",
        path.display()
    );
}
