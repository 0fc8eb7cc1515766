;; cpu.wat: a CPU-bound loop for fuel and throughput tests.
;;
;; `spin(iterations: i64) -> i64` runs an xorshift64 generator `iterations` times and returns
;; the final state, so the work cannot be skipped and the result is deterministic
;; (`spin(0)` = 88172645463325252, the seed). Each iteration costs a fixed amount of fuel, so
;; a job with little fuel ends as `outOfFuel`. No imports, no memory.
(module
  (func (export "spin") (param $iterations i64) (result i64)
    (local $x i64)
    (local.set $x (i64.const 88172645463325252))
    (block $done
      (loop $next
        (br_if $done (i64.le_s (local.get $iterations) (i64.const 0)))
        ;; x ^= x << 13; x ^= x >> 7; x ^= x << 17
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
        (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
        (local.set $iterations (i64.sub (local.get $iterations) (i64.const 1)))
        (br $next)))
    (local.get $x)))
