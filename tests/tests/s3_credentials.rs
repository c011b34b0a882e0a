//! The dispatcher's bucket credentials the AWS way, against Garage: a
//! named profile in a shared credentials file (no keys in the environment),
//! temporary credentials with a session token, and nothing at all (serve
//! refuses to start and says where it looked). In each case that works, a
//! real worker renders a job through the presigned URLs and the API's
//! result URL downloads the image, so both signers used those credentials.

use anyhow::{ensure, Context, Result};
use kiln_protocol::api::BatchRequest;
use kiln_protocol::JobState;
use kiln_tests::scale::Cluster;
use std::time::{Duration, Instant};

/// Submits one test-pattern job and waits for it; answers the job and the
/// bytes of its image, fetched through the result URL the API hands out.
async fn render_one(c: &mut Cluster) -> Result<(kiln_protocol::api::Job, Vec<u8>)> {
    let mut worker = c.start_worker("test-pattern", 1, 5)?;
    worker.wait_until_ready().await?;
    let request: BatchRequest = serde_json::from_value(serde_json::json!({
        "engine": "test-pattern",
        "prompts": ["a credentials check"],
        "params": {"width": 32, "height": 32, "steps": 1},
    }))?;
    let batch = c.api.submit(&request).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let jobs = c.api.jobs(batch.id).await?;
        let job = jobs.into_iter().next().context("one job")?;
        if job.state.is_terminal() {
            break job;
        }
        ensure!(Instant::now() < deadline, "the job did not finish: {job:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        job.state == JobState::Succeeded,
        "{job:?}\n{}",
        worker.log_tail(20)
    );
    let url = job.results[0].url.clone().context("a result URL")?;
    let resp = reqwest::get(&url).await?;
    ensure!(resp.status().is_success(), "{}: {url}", resp.status());
    let png = resp.bytes().await?.to_vec();
    ensure!(png.starts_with(b"\x89PNG"), "a PNG");
    worker.stop(Duration::from_secs(10)).await;
    Ok((job, png))
}

/// The environment that hides the stack's keys from a dispatcher (empty is
/// unset to the settings and to the AWS chain), and metadata lookups.
fn without_keys(home: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
        ("AWS_SESSION_TOKEN", ""),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("HOME", home),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_signs_with_a_named_profile_from_a_shared_credentials_file() -> Result<()> {
    let s3 = kiln_tests::S3::from_env();
    let dir = tempdir("profile")?;
    let file = dir.join("credentials");
    std::fs::write(
        &file,
        format!(
            "[default]\naws_access_key_id = GKnotthisone\naws_secret_access_key = nope\n\n\
             [kiln-test]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key, s3.secret_key
        ),
    )?;
    let home = dir.display().to_string();
    let file = file.display().to_string();
    let config = dir.join("config").display().to_string();
    let mut env = without_keys(&home);
    env.extend([
        ("AWS_SHARED_CREDENTIALS_FILE", file.as_str()),
        ("AWS_CONFIG_FILE", config.as_str()),
        ("AWS_PROFILE", "kiln-test"),
    ]);
    let mut c = Cluster::start(&env).await?;
    render_one(&mut c).await?;
    c.dispatcher.ensure_running()?;
    c.remove_logs();
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_credentials_carry_their_session_token_in_every_signature() -> Result<()> {
    // Garage takes the token as one more signed parameter or header: a URL
    // or a request that lost it, or signed without it, is refused.
    let mut c = Cluster::start(&[("AWS_SESSION_TOKEN", "kiln-session-token/+=")]).await?;
    let (job, _) = render_one(&mut c).await?;
    let url = job.results[0].url.clone().context("a result URL")?;
    ensure!(
        url.contains("X-Amz-Security-Token=kiln-session-token%2F%2B%3D"),
        "{url}"
    );
    // The same URL without its token no longer matches its signature.
    let stripped: String = url
        .split('&')
        .filter(|p| !p.starts_with("X-Amz-Security-Token="))
        .collect::<Vec<_>>()
        .join("&");
    let refused = reqwest::get(&stripped).await?.status();
    ensure!(refused.as_u16() == 403, "{refused} for {stripped}");
    c.remove_logs();
    Ok(())
}

#[tokio::test]
async fn with_no_credentials_anywhere_serve_refuses_to_start_and_says_where_it_looked() -> Result<()>
{
    let dir = tempdir("none")?;
    let home = dir.display().to_string();
    let nowhere = dir.join("missing").display().to_string();
    let services = kiln_tests::scale::Services::fresh().await?;
    let out = tokio::process::Command::new(kiln_tests::bin("kiln-dispatcher"))
        .arg("serve")
        .env("KILN_DATABASE_URL", &services.database_url)
        .env("KILN_AMQP_URL", &services.amqp_url)
        .env("KILN_BIND", "127.0.0.1:0")
        .envs(services.s3.envs())
        .envs(without_keys(&home))
        .env("AWS_SHARED_CREDENTIALS_FILE", &nowhere)
        .env("AWS_CONFIG_FILE", &nowhere)
        .env_remove("AWS_PROFILE")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .context("serve did not give up within 60 s")??;
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    ensure!(
        !out.status.success(),
        "serve started without credentials:\n{text}"
    );
    for says in [
        "no S3 credentials found",
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ] {
        ensure!(text.contains(says), "{says} missing from:\n{text}");
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

fn tempdir(tag: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("kiln-s3-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
