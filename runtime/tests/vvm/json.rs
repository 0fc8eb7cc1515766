use std::time::Duration;

use voike_runtime::{JobSpec, Limits, Status};

use crate::*;

#[test]
fn job_spec_json_takes_camel_case_and_defaults() {
    let job: JobSpec = serde_json::from_str(
        r#"{"entry":"fib_segment","args":["0","10"],
            "limits":{"wallTime":"2s","fuel":1000},
            "caps":{"scratchDir":"/tmp/x","env":[["K","V"]]}}"#,
    )
    .expect("valid job");
    assert_eq!(job.entry, "fib_segment");
    assert_eq!(job.limits.wall_time, Duration::from_secs(2));
    assert_eq!(job.limits.fuel, 1000);
    assert_eq!(job.limits.memory_bytes, Limits::default().memory_bytes);
    assert_eq!(job.caps.env, vec![("K".to_owned(), "V".to_owned())]);
    assert!(!job.caps.clock);

    let empty: JobSpec = serde_json::from_str("{}").expect("all defaults");
    assert_eq!(empty, JobSpec::default());
    assert_eq!(empty.entry, "_start");

    let err = serde_json::from_str::<JobSpec>(r#"{"entrypoint":"x"}"#).expect_err("unknown key");
    assert!(err.to_string().contains("entrypoint"), "{err}");
}

#[test]
fn outcome_json_tags_the_status() {
    let rt = runtime();
    let module = compile(&rt, CPU);
    let job = JobSpec {
        limits: Limits {
            fuel: 100,
            ..Limits::default()
        },
        ..JobSpec::call("spin", &["1000000"])
    };
    let outcome = rt.run(&module, &job);
    let json = serde_json::to_value(&outcome).expect("serializes");
    assert_eq!(json["status"], serde_json::json!({"kind": "outOfFuel"}));
    assert_eq!(json["fuelUsed"], 100);

    let exit = serde_json::to_value(Status::Exit(3)).expect("serializes");
    assert_eq!(exit, serde_json::json!({"kind": "exit", "detail": 3}));
    let back: Status = serde_json::from_value(exit).expect("round trip");
    assert_eq!(back, Status::Exit(3));
}
