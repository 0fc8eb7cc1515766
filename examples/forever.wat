;; forever.wat: an infinite loop.
;;
;; `run()` never returns. Epoch interruption ends it at the job's wall-time limit (status
;; `timeout`), or fuel runs out first (status `outOfFuel`), whichever limit is lower. Other jobs
;; on the node keep running meanwhile.
(module
  (func (export "run")
    (loop $again
      (br $again))))
