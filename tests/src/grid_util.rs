//! Grid helpers for black-box tests: upload module bytes, submit jobs, wait for them to end.

use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::{Api, TestNode, wait_for};

/// Uploads `bytes` (wasm or WAT) to `POST /vvm/modules`; returns the response as it came.
pub fn upload_module(node: &TestNode, bytes: &[u8]) -> anyhow::Result<Api> {
    let url = format!("{}/vvm/modules", node.api);
    let mut r = ureq::post(&url)
        .header("Authorization", &format!("Bearer {}", node.token))
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .send(bytes)?;
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    Ok(Api {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    })
}

/// Uploads a module that must be accepted; returns its hash.
pub fn upload_ok(node: &TestNode, bytes: &[u8]) -> anyhow::Result<String> {
    let r = upload_module(node, bytes)?;
    anyhow::ensure!(r.status == 201, "upload: {} {}", r.status, r.body);
    Ok(r.body["module"]["hash"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Submits a job that must be accepted; returns its id.
pub fn submit_job(node: &TestNode, job: &Value) -> anyhow::Result<String> {
    let r = node.post("/grid/jobs", job)?;
    anyhow::ensure!(r.status == 201, "submit: {} {}", r.status, r.body);
    Ok(r.body["job"]["id"].as_str().unwrap_or_default().to_string())
}

/// `GET /grid/jobs/{id}`'s job.
pub fn get_job(node: &TestNode, id: &str) -> anyhow::Result<Value> {
    let r = node.get(&format!("/grid/jobs/{id}"))?;
    anyhow::ensure!(r.status == 200, "job {id}: {} {}", r.status, r.body);
    Ok(r.body["job"].clone())
}

/// Waits until job `id` is `done` or `failed` on `node`; returns it.
pub fn job_finished(node: &TestNode, id: &str, deadline: Duration) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    wait_for(
        deadline,
        &format!("job {id} finished on {}", node.name),
        || {
            last = get_job(node, id)?;
            Ok(last["state"] == "done" || last["state"] == "failed")
        },
    )?;
    Ok(last)
}

/// The first result of segment `segment`.
pub fn first_result(job: &Value, segment: usize) -> Value {
    job["segments"][segment]["results"][0].clone()
}

/// A result's output, decoded from base64 (lossy UTF-8).
pub fn result_stdout(result: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(result["stdout"].as_str().unwrap_or_default())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}
