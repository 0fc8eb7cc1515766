use voike_runtime::{JobSpec, Status};

use crate::*;

#[test]
fn fib_command_prints_fib_of_n() {
    let rt = runtime();
    let module = compile(&rt, FIB);
    for (args, n) in [
        (&["10"][..], 10u64),
        (&["--n", "90"][..], 90),
        (&["1"][..], 1),
        (&["0"][..], 0),
        (&["--n", "123456"][..], 123_456),
    ] {
        let outcome = rt.run(&module, &JobSpec::command(args));
        assert_ok(&outcome);
        assert_eq!(outcome.exit_code, Some(0));
        assert_eq!(
            String::from_utf8_lossy(&outcome.stdout),
            format!("{}\n", fib_ref(n)),
            "args {args:?}"
        );
    }
}

#[test]
fn fib_command_without_n_prints_usage_and_exits_2() {
    let rt = runtime();
    let module = compile(&rt, FIB);
    let outcome = rt.run(&module, &JobSpec::command(&["--n"]));
    assert_eq!(outcome.status, Status::Exit(2));
    assert_eq!(outcome.exit_code, Some(2));
    assert_eq!(outcome.stderr, b"usage: fib [--n] N\n");
    assert!(outcome.stdout.is_empty());
}

#[test]
fn fib_command_accepts_long_argument_lists() {
    let rt = runtime();
    let module = compile(&rt, FIB);
    // More than one page of argv: `_start` grows its memory to fit.
    let filler = "x".repeat(1000);
    let mut args: Vec<&str> = vec![&filler; 100];
    args.push("20");
    let outcome = rt.run(&module, &JobSpec::command(&args));
    assert_ok(&outcome);
    assert_eq!(outcome.stdout, b"6765\n");
}

#[test]
fn fib_function_matches_a_rust_reference() {
    let rt = runtime();
    let module = compile(&rt, FIB);
    for n in [0u64, 1, 2, 3, 10, 50, 93, 1000, 65_537, 200_000] {
        let outcome = call(&rt, &module, "fib", &[&n.to_string()]);
        assert_ok(&outcome);
        assert_eq!(outcome.returns, vec![fib_ref(n) as i64], "F({n})");
    }
}

#[test]
fn fib_segment_matches_a_rust_reference() {
    let rt = runtime();
    let module = compile(&rt, FIB);
    for (start, end) in [
        (0u64, 0u64),
        (0, 1),
        (0, 2),
        (0, 10),
        (5, 6),
        (10, 20),
        (1000, 1500),
        (99_990, 100_000),
    ] {
        let outcome = call(
            &rt,
            &module,
            "fib_segment",
            &[&start.to_string(), &end.to_string()],
        );
        assert_ok(&outcome);
        assert_eq!(
            outcome.returns,
            vec![segment_ref(start, end) as i64],
            "[{start}, {end})"
        );
    }
    // An empty or reversed range sums to 0; a negative start counts from 0.
    assert_eq!(
        call(&rt, &module, "fib_segment", &["7", "3"]).returns,
        vec![0]
    );
    assert_eq!(
        call(&rt, &module, "fib_segment", &["-5", "10"]).returns,
        vec![segment_ref(0, 10) as i64]
    );
}

#[test]
fn split_fib_segments_add_up_to_the_whole_range() {
    let rt = runtime();
    let module = compile(&rt, FIB);
    let n = 1_000_000u64;
    let cuts = [0, 1, 250_000, 250_001, 600_000, n];
    let total = cuts
        .windows(2)
        .map(|w| {
            let outcome = call(
                &rt,
                &module,
                "fib_segment",
                &[&w[0].to_string(), &w[1].to_string()],
            );
            assert_ok(&outcome);
            outcome.returns[0] as u64
        })
        .fold(0, |acc, s| (acc + s) % P);
    // Sum of F(0..n) = F(n+1) - 1.
    assert_eq!(total, (fib_ref(n + 1) + P - 1) % P);
}

#[test]
fn wrong_argument_count_is_an_invalid_entry() {
    let rt = runtime();
    let module = compile(&rt, FIB);
    match call(&rt, &module, "fib_segment", &["1"]).status {
        Status::InvalidEntry(message) => {
            assert!(
                message.contains("takes 2 argument(s) (i64, i64)"),
                "{message}"
            );
            assert!(message.contains("gives 1"), "{message}");
        }
        other => panic!("expected an invalid entry, got {other:?}"),
    }
}

#[test]
fn non_numeric_argument_is_an_invalid_entry() {
    let rt = runtime();
    let module = compile(&rt, FIB);
    match call(&rt, &module, "fib_segment", &["1", "ten"]).status {
        Status::InvalidEntry(message) => {
            assert!(message.contains("argument 2"), "{message}");
            assert!(message.contains("`ten`"), "{message}");
        }
        other => panic!("expected an invalid entry, got {other:?}"),
    }
    // i32 arguments are range-checked (unsigned spellings keep their bits).
    let memhog = compile(&rt, MEMHOG);
    assert!(matches!(
        call(&rt, &memhog, "grow", &["4294967296"]).status,
        Status::InvalidEntry(_)
    ));
    assert_eq!(
        call(&rt, &memhog, "grow", &["4294967295"]).returns,
        vec![-1],
        "u32::MAX is -1 pages: refused"
    );
}

#[test]
fn missing_entry_is_an_invalid_entry_that_lists_the_functions() {
    let rt = runtime();
    let module = compile(&rt, FIB);
    match call(&rt, &module, "nope", &[]).status {
        Status::InvalidEntry(message) => {
            assert!(message.contains("`nope`"), "{message}");
            assert!(message.contains("fib_segment"), "{message}");
        }
        other => panic!("expected an invalid entry, got {other:?}"),
    }
    assert!(matches!(
        call(&rt, &module, "memory", &[]).status,
        Status::InvalidEntry(_)
    ));
}

#[test]
fn float_parameters_and_results_are_invalid_entries() {
    let rt = runtime();
    let module = compile(
        &rt,
        r#"(module
             (func (export "half") (param f64) (result f64) (f64.mul (local.get 0) (f64.const 0.5)))
             (func (export "pi") (result f32) (f32.const 3.14)))"#,
    );
    for (entry, args) in [("half", &["1"][..]), ("pi", &[][..])] {
        match call(&rt, &module, entry, args).status {
            Status::InvalidEntry(message) => {
                assert!(message.contains("only i32 and i64"), "{message}")
            }
            other => panic!("expected an invalid entry, got {other:?}"),
        }
    }
}

#[test]
fn function_entries_return_several_integers() {
    let rt = runtime();
    let module = compile(
        &rt,
        r#"(module (func (export "pair") (param i32 i64) (result i64 i32)
             (i64.mul (local.get 1) (i64.const 2))
             (i32.sub (i32.const 0) (local.get 0))))"#,
    );
    let outcome = call(&rt, &module, "pair", &["5", "-21"]);
    assert_ok(&outcome);
    assert_eq!(outcome.returns, vec![-42, -5]);
    assert_eq!(outcome.exit_code, None);
}

#[test]
fn a_function_entry_may_print_through_wasi() {
    let rt = runtime();
    // hello's `_start` is also an ordinary exported function.
    let module = compile(
        &rt,
        &HELLO.replace(r#"(export "_start")"#, r#"(export "greet")"#),
    );
    let outcome = call(&rt, &module, "greet", &[]);
    assert_ok(&outcome);
    assert_eq!(outcome.stdout, b"hello from the VVM\n");
}

#[test]
fn reactor_initialize_runs_before_the_entry() {
    let rt = runtime();
    let module = compile(
        &rt,
        r#"(module
             (global $ready (mut i32) (i32.const 0))
             (func (export "_initialize") (global.set $ready (i32.const 1)))
             (func (export "ready") (result i32) (global.get $ready)))"#,
    );
    assert_eq!(call(&rt, &module, "ready", &[]).returns, vec![1]);
}
