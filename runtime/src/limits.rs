//! [`ModuleLimits`]: a bound on what one module may cost to compile, checked by scanning the
//! binary with `wasmparser` before it is validated or handed to Cranelift.
//!
//! Cranelift's compile time and memory grow with the code it is given, and some shapes grow
//! them much faster than their size suggests: very many functions (each one a compilation
//! unit with its own fixed cost), very large function bodies, very many locals in one function
//! (one SSA variable each, all live across the register allocator), and control blocks nested
//! thousands deep. A member could otherwise upload a few megabytes that keep a runner's cores
//! busy and its memory full for minutes. The scan is one linear pass over the bytes with no
//! allocation per operator, so refusing costs far less than compiling would.

use serde::{Deserialize, Serialize};
use wasmparser::{Operator, Parser, Payload, TypeRef};

/// Bounds on one module's shape, each checked before compiling. Defaults fit what toolchains
/// emit for real programs (a large Rust or C program has a few thousand functions, a few
/// hundred locals per function and nesting in the tens) with a wide margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModuleLimits {
    /// Most functions, imported and defined together. Default 10 000.
    pub max_functions: u32,
    /// Largest function body, in bytes of its encoding. Default 262 144 (256 KiB).
    pub max_function_bytes: u32,
    /// Most locals one function may declare (parameters not included). Default 10 000.
    pub max_locals: u32,
    /// Deepest nesting of control blocks (`block`, `loop`, `if`, `try`, `try_table`) in one
    /// function. Default 512.
    pub max_nesting_depth: u32,
}

impl Default for ModuleLimits {
    fn default() -> Self {
        Self {
            max_functions: 10_000,
            max_function_bytes: 256 << 10,
            max_locals: 10_000,
            max_nesting_depth: 512,
        }
    }
}

/// Which limit a module went over, by its setting's name, with the value found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitExceeded {
    #[error("module has {value} functions; the limit is max_functions = {limit}")]
    Functions { value: u64, limit: u32 },
    #[error("function {function} is {value} bytes; the limit is max_function_bytes = {limit}")]
    FunctionBytes {
        function: u32,
        value: u64,
        limit: u32,
    },
    #[error("function {function} declares {value} locals; the limit is max_locals = {limit}")]
    Locals {
        function: u32,
        value: u64,
        limit: u32,
    },
    #[error(
        "function {function} nests control blocks {value} deep; the limit is \
         max_nesting_depth = {limit}"
    )]
    NestingDepth {
        function: u32,
        value: u64,
        limit: u32,
    },
}

/// Why [`ModuleLimits::check`] refused a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// Over a limit.
    Limit(LimitExceeded),
    /// The bytes do not parse as a module (the validator would have refused them too).
    Malformed(String),
}

impl From<wasmparser::BinaryReaderError> for ScanError {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        ScanError::Malformed(e.to_string())
    }
}

impl From<LimitExceeded> for ScanError {
    fn from(e: LimitExceeded) -> Self {
        ScanError::Limit(e)
    }
}

impl ModuleLimits {
    /// Scans a wasm binary and returns the first limit it exceeds, stopping there: the function
    /// count is checked as soon as the import and function sections are read, before any code.
    /// Components (which the VVM does not run) and malformed bytes are [`ScanError::Malformed`].
    pub(crate) fn check(&self, binary: &[u8]) -> Result<(), ScanError> {
        let mut imported: u64 = 0;
        // Index of the next defined function in the function index space.
        let mut function: u32 = 0;
        for payload in Parser::new(0).parse_all(binary) {
            match payload? {
                Payload::Version {
                    encoding: wasmparser::Encoding::Component,
                    ..
                } => {
                    return Err(ScanError::Malformed(
                        "a component, not a core module; the VVM runs core modules".to_owned(),
                    ));
                }
                Payload::ImportSection(reader) => {
                    for import in reader {
                        if matches!(import?.ty, TypeRef::Func(_) | TypeRef::FuncExact(_)) {
                            imported += 1;
                        }
                    }
                    self.check_functions(imported)?;
                    function = u32::try_from(imported).unwrap_or(u32::MAX);
                }
                Payload::FunctionSection(reader) => {
                    self.check_functions(imported + u64::from(reader.count()))?;
                }
                Payload::CodeSectionStart { count, .. } => {
                    self.check_functions(imported + u64::from(count))?;
                }
                Payload::CodeSectionEntry(body) => {
                    self.check_body(function, &body)?;
                    function = function.saturating_add(1);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_functions(&self, value: u64) -> Result<(), LimitExceeded> {
        if value > u64::from(self.max_functions) {
            return Err(LimitExceeded::Functions {
                value,
                limit: self.max_functions,
            });
        }
        Ok(())
    }

    fn check_body(
        &self,
        function: u32,
        body: &wasmparser::FunctionBody<'_>,
    ) -> Result<(), ScanError> {
        let size = body.range().len() as u64;
        if size > u64::from(self.max_function_bytes) {
            return Err(LimitExceeded::FunctionBytes {
                function,
                value: size,
                limit: self.max_function_bytes,
            }
            .into());
        }
        let mut locals: u64 = 0;
        for group in body.get_locals_reader()? {
            let (count, _) = group?;
            locals += u64::from(count);
            if locals > u64::from(self.max_locals) {
                return Err(LimitExceeded::Locals {
                    function,
                    value: locals,
                    limit: self.max_locals,
                }
                .into());
            }
        }
        // The body itself is one block: its final `end` brings the depth back to 0.
        let mut depth: u64 = 1;
        let mut ops = body.get_operators_reader()?;
        while !ops.eof() {
            match ops.read()? {
                Operator::Block { .. }
                | Operator::Loop { .. }
                | Operator::If { .. }
                | Operator::Try { .. }
                | Operator::TryTable { .. } => {
                    depth += 1;
                    // The function's own block does not count.
                    if depth - 1 > u64::from(self.max_nesting_depth) {
                        return Err(LimitExceeded::NestingDepth {
                            function,
                            value: depth - 1,
                            limit: self.max_nesting_depth,
                        }
                        .into());
                    }
                }
                Operator::End | Operator::Delegate { .. } => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{LimitExceeded, ModuleLimits, ScanError};

    fn binary(wat: &str) -> Vec<u8> {
        wat::parse_str(wat).expect("test module parses")
    }

    /// A module with `n` empty functions.
    fn functions(n: usize) -> Vec<u8> {
        binary(&format!("(module {})", "(func)".repeat(n)))
    }

    /// One function with `depth` nested blocks.
    fn nested(depth: usize) -> Vec<u8> {
        binary(&format!(
            "(module (func {}{}))",
            "(block ".repeat(depth),
            ")".repeat(depth)
        ))
    }

    fn limit(result: Result<(), ScanError>) -> LimitExceeded {
        match result {
            Err(ScanError::Limit(l)) => l,
            other => panic!("expected a limit, got {other:?}"),
        }
    }

    #[test]
    fn ordinary_module_is_within_the_default_limits() {
        let fib = include_str!("../../examples/fib.wat");
        assert_eq!(ModuleLimits::default().check(&binary(fib)), Ok(()));
    }

    #[test]
    fn too_many_functions_are_refused_naming_the_count_and_the_limit() {
        let limits = ModuleLimits {
            max_functions: 100,
            ..ModuleLimits::default()
        };
        assert_eq!(limits.check(&functions(100)), Ok(()));
        let refused = limit(limits.check(&functions(101)));
        assert_eq!(
            refused,
            LimitExceeded::Functions {
                value: 101,
                limit: 100
            }
        );
        assert_eq!(
            refused.to_string(),
            "module has 101 functions; the limit is max_functions = 100"
        );
    }

    #[test]
    fn imported_functions_count_towards_the_function_limit() {
        let limits = ModuleLimits {
            max_functions: 2,
            ..ModuleLimits::default()
        };
        let wasm = binary(
            r#"(module
                 (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
                 (import "wasi_snapshot_preview1" "sched_yield" (func (result i32)))
                 (func))"#,
        );
        assert!(matches!(
            limit(limits.check(&wasm)),
            LimitExceeded::Functions { value: 3, .. }
        ));
    }

    #[test]
    fn deep_nesting_is_refused_at_the_first_block_past_the_limit() {
        let limits = ModuleLimits {
            max_nesting_depth: 50,
            ..ModuleLimits::default()
        };
        assert_eq!(limits.check(&nested(50)), Ok(()));
        let refused = limit(limits.check(&nested(5000)));
        assert_eq!(
            refused,
            LimitExceeded::NestingDepth {
                function: 0,
                value: 51,
                limit: 50
            }
        );
        assert!(refused.to_string().contains("max_nesting_depth = 50"));
    }

    #[test]
    fn sequential_blocks_do_not_add_up_to_depth() {
        let limits = ModuleLimits {
            max_nesting_depth: 2,
            ..ModuleLimits::default()
        };
        let wasm = binary(&format!(
            "(module (func {}))",
            "(block (loop (nop)))".repeat(1000)
        ));
        assert_eq!(limits.check(&wasm), Ok(()));
    }

    #[test]
    fn many_locals_are_refused_naming_the_function() {
        let limits = ModuleLimits {
            max_locals: 10,
            ..ModuleLimits::default()
        };
        let wasm = binary(
            "(module (func) (func (local i32 i32 i32) (local i64)) (func (local i32 i64 i64 i64 i64 i64 i64 i64 i64 i64 i64)))",
        );
        assert_eq!(
            limit(limits.check(&wasm)),
            LimitExceeded::Locals {
                function: 2,
                value: 11,
                limit: 10
            }
        );
    }

    #[test]
    fn a_huge_local_count_does_not_overflow() {
        // Two groups of u32::MAX locals each: the sum is counted in 64 bits.
        let limits = ModuleLimits::default();
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        wasm.extend([1, 4, 1, 0x60, 0, 0]); // type section: () -> ()
        wasm.extend([3, 2, 1, 0]); // function section: one function of type 0
        let body = [
            2, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x7f, 0x0b,
        ];
        wasm.extend([10, body.len() as u8 + 2, 1, body.len() as u8]);
        wasm.extend(body);
        assert!(matches!(
            limit(limits.check(&wasm)),
            LimitExceeded::Locals { function: 0, .. }
        ));
    }

    #[test]
    fn large_function_bodies_are_refused() {
        let limits = ModuleLimits {
            max_function_bytes: 1000,
            ..ModuleLimits::default()
        };
        let wasm = binary(&format!("(module (func {}))", "(nop)".repeat(2000)));
        assert!(matches!(
            limit(limits.check(&wasm)),
            LimitExceeded::FunctionBytes {
                function: 0,
                limit: 1000,
                ..
            }
        ));
    }

    #[test]
    fn function_indices_count_imports_first() {
        let limits = ModuleLimits {
            max_locals: 1,
            ..ModuleLimits::default()
        };
        let wasm = binary(
            r#"(module
                 (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
                 (func (local i32 i32)))"#,
        );
        assert!(matches!(
            limit(limits.check(&wasm)),
            LimitExceeded::Locals { function: 1, .. }
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let limits = ModuleLimits::default();
        for bytes in [
            &b""[..],
            b"\0asm",
            b"\0asm\x01\0\0\0\x0a\xff\xff",
            b"\0asm\x0d\0\x01\0",
        ] {
            assert!(
                !matches!(limits.check(bytes), Ok(()) | Err(ScanError::Limit(_))),
                "{bytes:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut wasm = b"\0asm\x01\0\0\0".to_vec();
            wasm.extend(bytes);
            let _ = ModuleLimits::default().check(&wasm);
        }
    }
}
