//! Turning submitted bytes into a runnable [`Module`]: size cap, WAT or binary, the
//! [`ModuleLimits`] scan, validation, compilation under a timeout, linking against WASI; and [`module_hash`], the content
//! address modules are stored under.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Engine, ExternType, InstancePre, Linker, ModuleExport, ValType};

use crate::limits::{LimitExceeded, ModuleLimits, ScanError};
use crate::sandbox::JobState;

/// The only import module the VVM links.
pub(crate) const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// Why [`crate::Runtime::compile`] refused a module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// The submitted bytes are over `maxModuleBytes`.
    #[error("module is {size} bytes, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// Neither a wasm binary (`\0asm`) nor valid WebAssembly text.
    #[error("invalid module text: {0}")]
    InvalidText(String),
    /// A wasm binary that does not validate.
    #[error("invalid module: {0}")]
    Invalid(String),
    /// Over one of the [`ModuleLimits`]; found by a scan before compiling.
    #[error("module refused before compiling: {0}")]
    OverLimit(#[from] LimitExceeded),
    /// Valid, but the compiler or the instance pool's limits refused it (e.g. an initial
    /// memory larger than `maxMemoryBytes`).
    #[error("cannot compile module: {0}")]
    Compile(String),
    /// Compiling took longer than `compileTimeout`.
    #[error("compiling the module took longer than {0:?}")]
    Timeout(Duration),
    /// The module imports something the VVM does not provide, or with the wrong type.
    #[error("cannot link module: {0}")]
    Link(String),
}

/// Lowercase hex SHA-256 of the submitted bytes (binary or text): the module's content
/// address.
pub fn module_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A validated, compiled and linked module, ready to run any number of jobs. Cheap to clone.
#[derive(Clone)]
pub struct Module {
    pub(crate) pre: InstancePre<JobState>,
    hash: String,
    pub(crate) uses_wasi: bool,
    /// Every exported function with its signature, worked out once here so that running a
    /// job does not go back to wasmtime's type registry.
    pub(crate) entries: Arc<[EntrySig]>,
    /// The reactor initialiser `_initialize`, if the module exports one.
    pub(crate) initialize: Option<ModuleExport>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("hash", &self.hash)
            .field("uses_wasi", &self.uses_wasi)
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl Module {
    /// [`module_hash`] of the bytes this module was compiled from.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Names of the exported functions (possible job entries).
    pub fn entries(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }

    /// Bytes of compiled code and data this module holds in memory (what a cache of compiled
    /// modules is bounded by).
    pub fn code_bytes(&self) -> usize {
        let r = self.pre.module().image_range();
        (r.end as usize).saturating_sub(r.start as usize)
    }

    /// Whether the module imports WASI (and so gets a WASI context when it runs).
    pub fn uses_wasi(&self) -> bool {
        self.uses_wasi
    }

    pub(crate) fn inner(&self) -> &wasmtime::Module {
        self.pre.module()
    }

    pub(crate) fn entry(&self, name: &str) -> Option<&EntrySig> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// An exported function: where to find it in an instance, and its signature.
pub(crate) struct EntrySig {
    pub(crate) name: String,
    pub(crate) export: ModuleExport,
    pub(crate) params: Vec<ArgType>,
    pub(crate) results: Vec<ArgType>,
}

impl fmt::Debug for EntrySig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntrySig")
            .field("name", &self.name)
            .field("params", &self.params)
            .field("results", &self.results)
            .finish_non_exhaustive()
    }
}

/// A parameter or result type, as far as jobs are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ArgType {
    I32,
    I64,
    /// Anything else, by its WebAssembly name; an entry using one cannot be a job entry.
    Other(String),
}

impl ArgType {
    fn of(ty: &ValType) -> Self {
        match ty {
            ValType::I32 => ArgType::I32,
            ValType::I64 => ArgType::I64,
            other => ArgType::Other(other.to_string()),
        }
    }
}

impl fmt::Display for ArgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgType::I32 => f.write_str("i32"),
            ArgType::I64 => f.write_str("i64"),
            ArgType::Other(name) => f.write_str(name),
        }
    }
}

/// Compiles `bytes` on a helper thread and waits at most `timeout` for it. A compilation that
/// times out keeps running on its thread until Cranelift finishes, and its result is dropped.
pub(crate) fn compile(
    engine: &Engine,
    linker: &Linker<JobState>,
    bytes: &[u8],
    max_bytes: usize,
    limits: ModuleLimits,
    timeout: Duration,
) -> Result<Module, CompileError> {
    if bytes.len() > max_bytes {
        return Err(CompileError::TooLarge {
            size: bytes.len(),
            limit: max_bytes,
        });
    }
    let hash = module_hash(bytes);

    let (done, result) = mpsc::sync_channel(1);
    let thread_engine = engine.clone();
    let owned = bytes.to_vec();
    std::thread::Builder::new()
        .name("vvm-compile".to_owned())
        .spawn(move || {
            // The receiver may have given up (timeout); then nobody wants the result.
            let _ = done.send(compile_blocking(&thread_engine, &owned, &limits));
        })
        .map_err(|e| CompileError::Compile(format!("cannot start a compiler thread: {e}")))?;
    let module = match result.recv_timeout(timeout) {
        Ok(compiled) => compiled?,
        Err(RecvTimeoutError::Timeout) => return Err(CompileError::Timeout(timeout)),
        Err(RecvTimeoutError::Disconnected) => {
            return Err(CompileError::Compile(
                "the compiler thread panicked".to_owned(),
            ));
        }
    };

    for import in module.imports() {
        if import.module() != WASI_MODULE {
            return Err(CompileError::Link(format!(
                "module imports {}::{}, which the VVM does not provide (only {WASI_MODULE} is linked)",
                import.module(),
                import.name()
            )));
        }
    }
    // wasmtime's message names the import that is missing or has the wrong type.
    let pre = linker
        .instantiate_pre(&module)
        .map_err(|e| CompileError::Link(format!("{e:#}")))?;

    let uses_wasi = module.imports().next().is_some();
    let entries: Arc<[EntrySig]> = module
        .exports()
        .filter_map(|export| match export.ty() {
            ExternType::Func(ty) => Some(EntrySig {
                name: export.name().to_owned(),
                export: module.get_export_index(export.name())?,
                params: ty.params().map(|t| ArgType::of(&t)).collect(),
                results: ty.results().map(|t| ArgType::of(&t)).collect(),
            }),
            _ => None,
        })
        .collect();
    let initialize = entries
        .iter()
        .find(|e| e.name == "_initialize" && e.params.is_empty() && e.results.is_empty())
        .map(|e| e.export);
    Ok(Module {
        pre,
        hash,
        uses_wasi,
        entries,
        initialize,
    })
}

/// WAT to binary, the [`ModuleLimits`] scan, validation, then Cranelift: each step runs only
/// when the cheaper one before it passed.
fn compile_blocking(
    engine: &Engine,
    bytes: &[u8],
    limits: &ModuleLimits,
) -> Result<wasmtime::Module, CompileError> {
    let binary = if bytes.starts_with(b"\0asm") {
        Cow::Borrowed(bytes)
    } else {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            CompileError::InvalidText(format!(
                "not a wasm binary (no \\0asm header) and not UTF-8 text: {e}"
            ))
        })?;
        Cow::Owned(wat::parse_str(text).map_err(|e| CompileError::InvalidText(e.to_string()))?)
    };
    limits.check(&binary).map_err(|e| match e {
        ScanError::Limit(limit) => CompileError::OverLimit(limit),
        ScanError::Malformed(message) => CompileError::Invalid(message),
    })?;
    wasmtime::Module::validate(engine, &binary)
        .map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
    wasmtime::Module::new(engine, &binary).map_err(|e| CompileError::Compile(format!("{e:#}")))
}
