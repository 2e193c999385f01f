//! `medallion schemas check` as an operator runs it: the binary against a live registry.

use std::process::Command;

use medallion_contracts::schemas::{for_topic, subject_for};
use medallion_tests::registry_server::RegistryServer;

fn medallion(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_medallion"))
        .args(args)
        .output()
        .expect("run medallion");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_compiled_in_history_passes() {
    let (code, stdout, stderr) = medallion(&["schemas", "check"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("ok: 8 topics"), "{stdout}");
}

#[tokio::test]
async fn check_against_a_live_registry_passes_then_fails_on_a_conflicting_subject() {
    let server = RegistryServer::start().await.expect("server");
    let url = server.url();
    // An empty registry accepts everything; then register the current schemas.
    let (code, stdout, stderr) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || medallion(&["schemas", "check", "--registry-url", &url])
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, stderr) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || medallion(&["schemas", "register", "--registry-url", &url])
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 8, "{stdout}");

    // Someone forced a version of gold.data.ready whose `org_id` is a string: our current
    // schema cannot read that data, so deploying this build must be stopped.
    let topic = "gold.data.ready";
    let conflicting = for_topic(topic).expect("topic").current.text.replacen(
        "\"type\": \"long\",\n      \"doc\": \"The customer",
        "\"type\": \"string\",\n      \"doc\": \"The customer",
        1,
    );
    assert_ne!(conflicting, for_topic(topic).expect("topic").current.text);
    server
        .force_register(&subject_for(topic), &conflicting)
        .expect("force");
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        medallion(&["schemas", "check", "--registry-url", &url])
    })
    .await
    .expect("join");
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("INCOMPATIBLE gold.data.ready-value"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("INCOMPATIBLE").count(), 1, "{stdout}");
}

#[test]
fn an_unreachable_registry_is_an_error_naming_it() {
    let (code, _, stderr) =
        medallion(&["schemas", "check", "--registry-url", "http://127.0.0.1:9"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("http://127.0.0.1:9"), "{stderr}");
}
