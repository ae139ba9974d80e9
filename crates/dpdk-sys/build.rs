//! Generates the DPDK bindings and compiles the C shims that make DPDK's
//! `static inline` fast-path functions (rx/tx burst, mbuf alloc/free, ring
//! enqueue/dequeue, ...) callable from Rust.
//!
//! Everything about the installed DPDK comes from `pkg-config libdpdk`: the
//! cflags are passed verbatim to both clang (bindgen) and the C compiler (cc),
//! so the generated wrappers are built exactly the way DPDK expects its headers
//! to be compiled (`-include rte_config.h`, the `-march` DPDK was built for).

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Oldest DPDK release whose API the safe layer is written against.
const MIN_DPDK: &str = "22.11";
const INSTALL_HINT: &str =
    "install it with `apt-get install libdpdk-dev pkg-config` (Debian 12 ships DPDK 22.11)";

fn pkg_config(args: &[&str]) -> Result<String, String> {
    let out = Command::new("pkg-config")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run pkg-config ({e}); {INSTALL_HINT}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn check_version() {
    let at_least = format!("--atleast-version={MIN_DPDK}");
    if pkg_config(&[&at_least, "libdpdk"]).is_ok() {
        return;
    }
    let found = match pkg_config(&["--modversion", "libdpdk"]) {
        Ok(v) => format!("found libdpdk {v}"),
        Err(e) if e.is_empty() => "libdpdk was not found by pkg-config".to_string(),
        Err(e) => format!("libdpdk was not found by pkg-config: {e}"),
    };
    panic!("dpdk-sys needs DPDK >= {MIN_DPDK} (pkg-config libdpdk), but {found}; {INSTALL_HINT}");
}

/// Split pkg-config output into arguments. pkg-config escapes spaces inside an
/// argument with a backslash, which is the only quoting it emits.
fn split_flags(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn get_flags(args: &[&str]) -> Vec<String> {
    match pkg_config(args) {
        Ok(s) => split_flags(&s),
        Err(e) => panic!("pkg-config {} failed: {e}; {INSTALL_HINT}", args.join(" ")),
    }
}

/// Link against Debian's shared DPDK libraries. PMDs are not linked: EAL
/// dlopen()s them from its plugin directory at rte_eal_init time.
fn emit_link(libs: &[String]) {
    for flag in libs {
        if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={lib}");
        } else if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        }
        // `-Wl,--as-needed` and similar linker options are rustc's business:
        // it already links dylibs as-needed on Linux.
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/wrapper.h");
    println!("cargo:rerun-if-changed=src/helpers.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_SYSROOT_DIR");

    check_version();
    let cflags = get_flags(&["--cflags", "libdpdk"]);
    let libs = get_flags(&["--libs", "libdpdk"]);
    if let Ok(v) = pkg_config(&["--modversion", "libdpdk"]) {
        println!("cargo:version={v}");
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let header = manifest.join("src/wrapper.h");
    let static_fns = out_dir.join("static_fns");

    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .clang_args(&cflags)
        // Keep the bindings to DPDK's own namespace; libc types come in as
        // dependencies of what is allowlisted.
        .allowlist_function("rte_.*|cgnat_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("RTE_.*|RING_F_.*|MEMPOOL_F_.*|SOCKET_ID_ANY|LCORE_ID_ANY|cgnat_.*")
        // A packed struct that contains an aligned one: rustc rejects that
        // (E0588), and nothing in cgnat looks inside it.
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        // Contains a bitfield union bindgen cannot derive Debug for.
        .no_debug("rte_flow_item_gtp_psc")
        // C enums become plain integer constants named as in C
        // (RTE_ETH_MQ_RX_RSS), which is how the DPDK docs spell them.
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        // Layout tests would re-check clang against itself; skipping them
        // keeps the (large) generated file quicker to compile.
        .layout_tests(false)
        .generate_comments(false)
        .wrap_static_fns(true)
        .wrap_static_fns_path(&static_fns)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| panic!("bindgen failed on {}: {e}", header.display()));
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .expect("write bindings.rs into OUT_DIR");

    let mut build = cc::Build::new();
    build
        .file(static_fns.with_extension("c"))
        .file(manifest.join("src/helpers.c"))
        .include(manifest.join("src"))
        // DPDK headers are not warning-clean under -Wextra; the shims are
        // generated code, so their warnings are noise.
        .warnings(false);
    for f in &cflags {
        build.flag(f);
    }
    build.compile("cgnat_dpdk_shims");

    emit_link(&libs);
    // rte_vdev_init (creating virtual ports at run time) lives in the vdev
    // bus driver, which Debian ships as a plugin that pkg-config's shared
    // libs leave out. Linking it is harmless: EAL's later dlopen of the same
    // file finds it already loaded.
    println!("cargo:rustc-link-lib=dylib=rte_bus_vdev");
    // rte_eth_from_rings (net_ring ports over application rings) is exported by the ring PMD
    // itself, which Debian's libdpdk.pc also leaves out of the shared libs (it lists no PMD). As
    // with the vdev bus, EAL's dlopen of the plugin finds the linked copy already loaded, and
    // rustc links dylibs as-needed, so binaries that never call it do not even load it.
    if !libs.iter().any(|f| f == "-lrte_net_ring") {
        println!("cargo:rustc-link-lib=dylib=rte_net_ring");
    }
}
