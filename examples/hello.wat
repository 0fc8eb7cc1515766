;; hello.wat: the smallest WASI preview 1 command.
;;
;; Run it as a `_start` job: it writes "hello from the VVM\n" to stdout with `fd_write` and
;; returns, so the job ends with status `ok` and exit code 0. It needs no capability.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; The message at offset 16; the iovec {ptr, len} at offset 0; `nwritten` lands at 8.
  (data (i32.const 16) "hello from the VVM\n")

  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))   ;; iov.buf
    (i32.store (i32.const 4) (i32.const 19))   ;; iov.buf_len
    (drop (call $fd_write
      (i32.const 1)     ;; fd 1: stdout
      (i32.const 0)     ;; iovs
      (i32.const 1)     ;; iovs_len
      (i32.const 8)))))  ;; nwritten
