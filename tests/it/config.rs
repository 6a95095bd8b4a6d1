//! A bad configuration value stops the start with a message naming its key.

use std::process::Command;

fn start_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .args(["serve", "--port", "0"])
        .current_dir(dir.path());
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("herald runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_values_stop_the_start_naming_the_key() {
    for (key, env, value) in [
        ("delivery.timeout", "HERALD__DELIVERY__TIMEOUT", "soon"),
        ("scheduler.tick", "HERALD__SCHEDULER__TICK", "0s"),
        (
            "server.header_read_timeout",
            "HERALD__SERVER__HEADER_READ_TIMEOUT",
            "0s",
        ),
        (
            "server.body_read_timeout",
            "HERALD__SERVER__BODY_READ_TIMEOUT",
            "whenever",
        ),
        (
            "security.encryption_key",
            "HERALD__SECURITY__ENCRYPTION_KEY",
            "abcd",
        ),
        (
            "delivery.backoff.policy",
            "HERALD__DELIVERY__BACKOFF__POLICY",
            "sometimes",
        ),
        (
            "database.url",
            "HERALD__DATABASE__URL",
            "mysql://localhost/herald",
        ),
        ("server.host", "HERALD__SERVER__HOST", "not an address"),
        (
            "delivery.dead_retry_interval",
            "HERALD__DELIVERY__DEAD_RETRY_INTERVAL",
            "500ms",
        ),
        (
            "delivery.dead_retry_interval",
            "HERALD__DELIVERY__DEAD_RETRY_INTERVAL",
            "never",
        ),
        (
            "delivery.bulk_retry_pause",
            "HERALD__DELIVERY__BULK_RETRY_PAUSE",
            "5m",
        ),
        ("admin.token", "HERALD__ADMIN__TOKEN", "short"),
        (
            "delivery.max_attempts",
            "HERALD__DELIVERY__MAX_ATTEMPTS",
            "0",
        ),
    ] {
        let (code, stderr) = start_with(&[(env, value)]);
        assert_ne!(code, Some(0), "{env}={value} must stop the start");
        assert!(code.is_some(), "{env}: exits, not killed");
        assert!(
            stderr.contains(key),
            "{env}={value}: message names `{key}`: {stderr}"
        );
        assert!(!stderr.contains("listening"), "{env}: never served");
    }
}

#[test]
fn unknown_keys_are_refused() {
    let (code, stderr) = start_with(&[("HERALD__SERVER__PROT", "80")]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("prot"), "{stderr}");
}

#[test]
fn check_config_prints_a_summary_without_secrets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("check-config")
        .current_dir(dir.path())
        .env(
            "HERALD__DATABASE__URL",
            "postgres://herald:hunter2hunter2@db/herald",
        )
        .output()
        .expect("runs");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("configuration is valid"));
    assert!(!stdout.contains("hunter2"), "{stdout}");
}
