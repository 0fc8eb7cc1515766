;; memhog.wat: asks for more and more linear memory.
;;
;; The memory starts at one 64 KiB page and declares no maximum, so only the job's memory
;; limit stops it. A `memory.grow` past that limit does not trap and does not end the job:
;; the guest sees -1, as the WebAssembly spec says, and carries on.
;;
;; * `grow(pages: i32) -> i32` asks for `pages` pages in one `memory.grow` and returns its
;;   result: the old size in pages, or -1 when the limit refuses it.
;; * `grow_each(pages: i32) -> i32` grows one page at a time, touching each new page, until it
;;   has `pages` more or a grow fails; it returns how many pages it got.
;; * `pages() -> i32` returns the current size in pages.
(module
  (memory (export "memory") 1)

  (func (export "grow") (param $pages i32) (result i32)
    (memory.grow (local.get $pages)))

  (func (export "grow_each") (param $pages i32) (result i32)
    (local $got i32)
    (local $old i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $got) (local.get $pages)))
        (local.set $old (memory.grow (i32.const 1)))
        (br_if $done (i32.eq (local.get $old) (i32.const -1)))
        ;; Write into the new page so that it is really used.
        (i32.store (i32.mul (local.get $old) (i32.const 65536)) (local.get $got))
        (local.set $got (i32.add (local.get $got) (i32.const 1)))
        (br $next)))
    (local.get $got))

  (func (export "pages") (result i32)
    (memory.size)))
