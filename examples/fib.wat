;; fib.wat: Fibonacci numbers modulo the prime P = 1_000_000_007, in two entry styles.
;;
;; F(0) = 0, F(1) = 1, F(i) = F(i-1) + F(i-2); every value here is taken modulo P.
;;
;; * `fib_segment(start: i64, end: i64) -> i64` returns (F(start) + F(start+1) + ... +
;;   F(end-1)) mod P: the sum over the half-open range [start, end). A negative `start` counts
;;   as 0; an empty range gives 0. This is the unit of a split job: cut [0, n) into segments,
;;   run each segment on a different node and add the results mod P; the total equals
;;   (F(n+1) - 1) mod P. It jumps to F(start) by fast doubling (64 steps) and then walks the
;;   segment one term at a time, so its cost is proportional to the segment's length.
;; * `fib(n: i64) -> i64` returns F(n) mod P (fast doubling).
;; * `_start` is a WASI command: `job N` or `job --n N` prints F(N) mod P and a newline to
;;   stdout (`job 10` prints `55`). The last argument made only of digits is N; with none it
;;   prints a usage line to stderr and exits with code 2.
;;
;; Memory layout used by `_start`: 0 argc, 4 argv_buf_size, 16 iovec, 24 nwritten,
;; 32..96 the digits of the answer, 128 the usage text, 1024.. argv pointers then argv strings.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  (memory (export "memory") 1)

  (data (i32.const 128) "usage: fib [--n] N\n")   ;; 19 bytes

  (global $P i64 (i64.const 1000000007))

  ;; (F(n), F(n+1)) mod P by fast doubling, reading the bits of n from the top:
  ;;   F(2k)   = F(k) * (2 F(k+1) - F(k))
  ;;   F(2k+1) = F(k)^2 + F(k+1)^2
  ;; Every product is below P^2 < 2^63, so i64 arithmetic never overflows.
  (func $fib_pair (param $n i64) (result i64 i64)
    (local $a i64) (local $b i64) (local $c i64) (local $d i64) (local $bit i64)
    (local.set $a (i64.const 0))
    (local.set $b (i64.const 1))
    (local.set $bit (i64.const 63))
    (loop $next
      ;; c = F(2k), d = F(2k+1)
      (local.set $c
        (i64.rem_u
          (i64.mul (local.get $a)
            (i64.rem_u
              (i64.sub (i64.add (i64.shl (local.get $b) (i64.const 1)) (global.get $P))
                       (local.get $a))
              (global.get $P)))
          (global.get $P)))
      (local.set $d
        (i64.rem_u
          (i64.add (i64.mul (local.get $a) (local.get $a))
                   (i64.mul (local.get $b) (local.get $b)))
          (global.get $P)))
      (if (i64.eqz (i64.and (i64.shr_u (local.get $n) (local.get $bit)) (i64.const 1)))
        (then
          (local.set $a (local.get $c))
          (local.set $b (local.get $d)))
        (else
          (local.set $a (local.get $d))
          (local.set $b (i64.rem_u (i64.add (local.get $c) (local.get $d)) (global.get $P)))))
      (if (i64.ne (local.get $bit) (i64.const 0))
        (then
          (local.set $bit (i64.sub (local.get $bit) (i64.const 1)))
          (br $next))))
    (local.get $a)
    (local.get $b))

  (func $fib (export "fib") (param $n i64) (result i64)
    (call $fib_pair (local.get $n))
    (drop))

  (func (export "fib_segment") (param $start i64) (param $end i64) (result i64)
    (local $a i64) (local $b i64) (local $t i64) (local $sum i64)
    (if (i64.lt_s (local.get $start) (i64.const 0))
      (then (local.set $start (i64.const 0))))
    (if (i64.le_s (local.get $end) (local.get $start))
      (then (return (i64.const 0))))
    (call $fib_pair (local.get $start))
    (local.set $b)
    (local.set $a)
    (loop $next
      (local.set $sum (i64.rem_u (i64.add (local.get $sum) (local.get $a)) (global.get $P)))
      (local.set $t (i64.rem_u (i64.add (local.get $a) (local.get $b)) (global.get $P)))
      (local.set $a (local.get $b))
      (local.set $b (local.get $t))
      (local.set $start (i64.add (local.get $start) (i64.const 1)))
      (br_if $next (i64.lt_s (local.get $start) (local.get $end))))
    (local.get $sum))

  ;; Parses the NUL-terminated string at $p as an unsigned decimal number.
  ;; Returns (value, 1) when it is one or more digits and nothing else, else (0, 0).
  (func $parse (param $p i32) (result i64 i32)
    (local $acc i64) (local $digits i32) (local $c i32)
    (block $end
      (loop $next
        (local.set $c (i32.load8_u (local.get $p)))
        (br_if $end (i32.eqz (local.get $c)))
        (if (i32.or (i32.lt_u (local.get $c) (i32.const 48)) (i32.gt_u (local.get $c) (i32.const 57)))
          (then (return (i64.const 0) (i32.const 0))))
        (local.set $acc
          (i64.add (i64.mul (local.get $acc) (i64.const 10))
                   (i64.extend_i32_u (i32.sub (local.get $c) (i32.const 48)))))
        (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $acc)
    (i32.ne (local.get $digits) (i32.const 0)))

  (func (export "_start")
    (local $argc i32) (local $needed i32) (local $have i32) (local $i i32)
    (local $n i64) (local $found i32) (local $value i64) (local $ok i32) (local $pos i32)
    ;; How much room do the arguments need? Grow the memory if one page is not enough.
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (local.set $argc (i32.load (i32.const 0)))
    (local.set $needed
      (i32.add (i32.const 1024)
        (i32.add (i32.mul (local.get $argc) (i32.const 4)) (i32.load (i32.const 4)))))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $needed) (local.get $have))
      (then
        (if (i32.eq (i32.const -1)
              (memory.grow
                (i32.div_u (i32.add (i32.sub (local.get $needed) (local.get $have)) (i32.const 65535))
                           (i32.const 65536))))
          (then (call $proc_exit (i32.const 3))))))
    (drop (call $args_get
      (i32.const 1024)
      (i32.add (i32.const 1024) (i32.mul (local.get $argc) (i32.const 4)))))
    ;; argv[0] is the program name; N is the last all-digit argument after it.
    (local.set $i (i32.const 1))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $argc)))
        (call $parse (i32.load (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 4)))))
        (local.set $ok)
        (local.set $value)
        (if (local.get $ok)
          (then
            (local.set $n (local.get $value))
            (local.set $found (i32.const 1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (if (i32.eqz (local.get $found))
      (then
        (i32.store (i32.const 16) (i32.const 128))
        (i32.store (i32.const 20) (i32.const 19))
        (drop (call $fd_write (i32.const 2) (i32.const 16) (i32.const 1) (i32.const 24)))
        (call $proc_exit (i32.const 2))))
    ;; Write the decimal digits of F(N) mod P backwards, ending with a newline at offset 95.
    (local.set $value (call $fib (local.get $n)))
    (local.set $pos (i32.const 95))
    (i32.store8 (local.get $pos) (i32.const 10))
    (loop $digit
      (local.set $pos (i32.sub (local.get $pos) (i32.const 1)))
      (i32.store8 (local.get $pos)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $value) (i64.const 10)))))
      (local.set $value (i64.div_u (local.get $value) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $value) (i64.const 0))))
    (i32.store (i32.const 16) (local.get $pos))
    (i32.store (i32.const 20) (i32.sub (i32.const 96) (local.get $pos)))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
