;; openfile.wat: tries to create a file, to show that there is no filesystem without the
;; capability.
;;
;; `_start` calls `path_open` on fd 3 (the first preopened directory, if any) for
;; `created-by-guest.txt` with O_CREAT, writes a line into it, and exits with the errno it got
;; from `path_open` (`proc_exit`).
;;
;; * Without a scratch directory there is no fd 3: `path_open` fails with EBADF (8), the job
;;   ends as `exit` with code 8 and no file appears anywhere.
;; * With `caps.scratchDir` granted, fd 3 is that directory (seen by the guest as `/scratch`):
;;   the file is created there and the job ends with exit code 0.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  (memory (export "memory") 1)

  (data (i32.const 64) "created-by-guest.txt")              ;; 20 bytes
  (data (i32.const 128) "written by a VVM guest\n")         ;; 23 bytes

  (func (export "_start")
    (local $errno i32)
    (local.set $errno (call $path_open
      (i32.const 3)          ;; dirfd: the first preopen
      (i32.const 0)          ;; dirflags: do not follow symlinks
      (i32.const 64)         ;; path
      (i32.const 20)         ;; path_len
      (i32.const 1)          ;; oflags: O_CREAT
      (i64.const 0x42)       ;; rights: fd_read | fd_write
      (i64.const 0x42)       ;; inherited rights
      (i32.const 0)          ;; fdflags
      (i32.const 0)))        ;; where the new fd is stored
    (if (i32.eqz (local.get $errno))
      (then
        (i32.store (i32.const 8) (i32.const 128))    ;; iov.buf
        (i32.store (i32.const 12) (i32.const 23))    ;; iov.buf_len
        (drop (call $fd_write (i32.load (i32.const 0)) (i32.const 8) (i32.const 1) (i32.const 16)))))
    (call $proc_exit (local.get $errno))))
