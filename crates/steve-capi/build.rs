//! Gives the shared library its soname, `libjobserver.so.0`: programs linked against it then
//! need that name at run time, whichever file of the version it points to is installed.

fn main() {
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libjobserver.so.0");
}
