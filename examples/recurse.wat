;; recurse.wat: unbounded recursion.
;;
;; `run() -> i64` calls `$down` with depth 0, and `$down` calls itself with depth + 1 before it
;; would ever add anything, so the call stack grows until wasmtime's stack limit stops it. The
;; job ends with status `trap` ("call stack exhausted"); the host thread's own stack is never
;; touched past the limit.
(module
  (func $down (param $depth i64) (result i64)
    (i64.add
      (call $down (i64.add (local.get $depth) (i64.const 1)))
      (local.get $depth)))

  (func (export "run") (result i64)
    (call $down (i64.const 0))))
