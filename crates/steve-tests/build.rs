//! Turns `STEVE_TEST_ALL=1` (set by `scripts/test`) into `cfg(steve_test_all)`, under which the
//! integration tests that need root, QEMU or the real clients run instead of being ignored.

fn main() {
    println!("cargo::rerun-if-env-changed=STEVE_TEST_ALL");
    println!("cargo::rustc-check-cfg=cfg(steve_test_all)");
    if std::env::var_os("STEVE_TEST_ALL").is_some_and(|value| value == "1") {
        println!("cargo::rustc-cfg=steve_test_all");
    }
}
