use std::time::Duration;

use proptest::prelude::*;
use voike_runtime::{CompileError, JobSpec, RuntimeConfig, Status, module_hash};

use crate::*;

#[test]
fn module_over_the_size_cap_is_refused_with_both_sizes() {
    let rt = runtime_with(RuntimeConfig {
        max_module_bytes: 1000,
        ..small()
    });
    let big = format!("(module) ;; {}", "x".repeat(2000));
    let err = rt.compile(big.as_bytes()).expect_err("too large");
    assert_eq!(
        err,
        CompileError::TooLarge {
            size: big.len(),
            limit: 1000
        }
    );
    assert_eq!(
        err.to_string(),
        format!("module is {} bytes, the limit is 1000", big.len())
    );
    // The default cap is 8 MiB.
    assert_eq!(RuntimeConfig::default().max_module_bytes, 8 << 20);
}

#[test]
fn invalid_binary_is_refused_as_an_invalid_module() {
    let rt = runtime();
    let err = rt
        .compile(b"\0asm\x01\0\0\0\xff\xff")
        .expect_err("garbage after the header");
    assert!(matches!(err, CompileError::Invalid(_)), "{err:?}");
    assert!(err.to_string().starts_with("invalid module: "), "{err}");
}

#[test]
fn text_that_does_not_validate_is_an_invalid_module() {
    let rt = runtime();
    // Parses, but the function returns nothing where it promised an i32.
    let err = rt
        .compile(br#"(module (func (export "f") (result i32)))"#)
        .expect_err("type error");
    assert!(matches!(err, CompileError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("type mismatch"), "{err}");
}

#[test]
fn malformed_text_is_an_invalid_module_text() {
    let rt = runtime();
    let err = rt.compile(b"(modul").expect_err("not WAT");
    assert!(matches!(err, CompileError::InvalidText(_)), "{err:?}");
    let err = rt.compile(&[0xff, 0xfe, 0x00]).expect_err("not UTF-8");
    assert!(err.to_string().contains("not a wasm binary"), "{err}");
}

#[test]
fn wat_and_its_binary_behave_the_same() {
    let rt = runtime();
    let binary = wat::parse_str(FIB).expect("example is valid WAT");
    assert!(binary.starts_with(b"\0asm"));
    let from_text = compile(&rt, FIB);
    let from_binary = rt.compile(&binary).expect("binary compiles");
    assert_ne!(
        from_text.hash(),
        from_binary.hash(),
        "hashes are of the submitted bytes"
    );
    let job = JobSpec::call("fib_segment", &["3", "30"]);
    assert_eq!(
        rt.run(&from_text, &job).returns,
        rt.run(&from_binary, &job).returns
    );
}

#[test]
fn imports_other_than_wasi_are_link_errors() {
    let rt = runtime();
    let err = rt
        .compile(br#"(module (import "env" "host_secret" (func)))"#)
        .expect_err("unknown import");
    assert!(matches!(err, CompileError::Link(_)), "{err:?}");
    assert!(err.to_string().contains("env::host_secret"), "{err}");

    let err = rt
        .compile(br#"(module (import "wasi_snapshot_preview1" "no_such_call" (func)))"#)
        .expect_err("unknown WASI function");
    assert!(err.to_string().contains("no_such_call"), "{err}");

    let err = rt
        .compile(br#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i64))))"#)
        .expect_err("wrong WASI signature");
    assert!(matches!(err, CompileError::Link(_)), "{err:?}");
}

#[test]
fn initial_memory_above_the_node_ceiling_is_refused_at_compile_time() {
    let rt = runtime();
    // 2000 pages = 125 MiB > 64 MiB.
    let err = rt
        .compile(br#"(module (memory 2000))"#)
        .expect_err("too much memory");
    assert!(matches!(err, CompileError::Compile(_)), "{err:?}");
    assert!(err.to_string().contains("exceeds"), "{err}");
}

#[test]
fn compilation_past_the_timeout_is_abandoned() {
    let rt = runtime_with(RuntimeConfig {
        compile_timeout: Duration::from_nanos(1),
        ..small()
    });
    let err = rt
        .compile(FIB.as_bytes())
        .expect_err("cannot compile in 1 ns");
    assert_eq!(err, CompileError::Timeout(Duration::from_nanos(1)));
    assert!(err.to_string().contains("longer than"), "{err}");
}

#[test]
fn module_hash_is_the_lowercase_hex_sha256_of_the_bytes() {
    assert_eq!(
        module_hash(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        module_hash(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let rt = runtime();
    assert_eq!(compile(&rt, HELLO).hash(), module_hash(HELLO.as_bytes()));
}

#[test]
fn compiled_modules_are_cached_on_disk_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = RuntimeConfig {
        cache_dir: Some(dir.path().join("wasm-cache")),
        ..small()
    };
    {
        let first = runtime_with(cfg.clone());
        let module = compile(&first, FIB);
        assert_eq!(
            first.cache_stats().map(|s| (s.hits, s.misses)),
            Some((0, 1)),
            "first compile fills the cache"
        );
        assert_ok(&first.run(&module, &JobSpec::call("fib", &["10"])));
    }
    let files = walk(dir.path());
    assert!(files > 0, "the cache directory has files");

    let second = runtime_with(cfg);
    let module = compile(&second, FIB);
    assert_eq!(
        second.cache_stats().map(|s| (s.hits, s.misses)),
        Some((1, 0)),
        "the restarted runtime loads the compiled module from disk"
    );
    let outcome = second.run(&module, &JobSpec::call("fib", &["10"]));
    assert_ok(&outcome);
    assert_eq!(outcome.returns, vec![55]);
    // Without a cache dir there are no stats.
    assert_eq!(runtime().cache_stats(), None);
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() { walk(&path) } else { 1 }
                })
                .sum()
        })
        .unwrap_or(0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_never_panic_compile(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let rt = shared();
        let _ = rt.compile(&bytes);
        let mut with_header = b"\0asm\x01\0\0\0".to_vec();
        with_header.extend_from_slice(&bytes);
        let _ = rt.compile(&with_header);
    }

    #[test]
    fn corrupted_modules_never_panic_compile_or_run(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
    ) {
        let rt = shared();
        let mut binary = wat::parse_str(CPU).expect("example is valid WAT");
        for (at, byte) in flips {
            let i = at.index(binary.len());
            binary[i] = byte;
        }
        if let Ok(module) = rt.compile(&binary) {
            let job = JobSpec {
                limits: voike_runtime::Limits { fuel: 100_000, ..Default::default() },
                ..JobSpec::call("spin", &["10"])
            };
            let outcome = rt.run(&module, &job);
            prop_assert!(!matches!(outcome.status, Status::HostError(_)), "{:?}", outcome.status);
        }
    }
}

/// One runtime for all property cases.
fn shared() -> &'static voike_runtime::Runtime {
    static RT: std::sync::OnceLock<voike_runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(runtime)
}

#[test]
fn over_complex_module_is_refused_before_compiling_naming_the_limit() {
    let rt = runtime_with(RuntimeConfig {
        module_limits: voike_runtime::ModuleLimits {
            max_functions: 500,
            max_nesting_depth: 64,
            ..Default::default()
        },
        ..small()
    });
    let many = format!("(module {})", "(func)".repeat(501));
    let err = rt.compile(many.as_bytes()).expect_err("too many functions");
    assert_eq!(
        err,
        CompileError::OverLimit(voike_runtime::LimitExceeded::Functions {
            value: 501,
            limit: 500
        })
    );
    assert_eq!(
        err.to_string(),
        "module refused before compiling: module has 501 functions; the limit is \
         max_functions = 500"
    );
    let deep = format!(
        "(module (func {}{}))",
        "(block ".repeat(10_000),
        ")".repeat(10_000)
    );
    let err = rt.compile(deep.as_bytes()).expect_err("nested too deep");
    assert!(
        err.to_string().contains("nests control blocks 65 deep")
            && err.to_string().contains("max_nesting_depth = 64"),
        "{err}"
    );
    // The same runtime still compiles and runs what is within the limits.
    let fib = compile(&rt, FIB);
    assert_eq!(call(&rt, &fib, "fib", &["10"]).returns, vec![55]);
}

#[test]
fn default_module_limits_accept_every_example() {
    let rt = runtime();
    for wat in [FIB, CPU, MEMHOG, FOREVER, HELLO, OPENFILE, RECURSE] {
        rt.compile(wat.as_bytes()).expect("example compiles");
    }
}
