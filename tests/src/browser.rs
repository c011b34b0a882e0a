//! A real browser for tests of the batch page: Debian's Chromium, headless,
//! driven through WebDriver by Debian's ChromeDriver (`chromium` and
//! `chromium-driver`; `deploy/local/browser` installs them, and
//! `KILN_CHROMEDRIVER` / `KILN_CHROMIUM` name other copies). The client is
//! a few W3C WebDriver calls over HTTP: open a page, find elements, click,
//! type, read text and attributes, run a script, take a screenshot.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one browser session on it; both end on drop.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: tokio::process::Child,
}

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

fn driver_path() -> String {
    crate::env_or("KILN_CHROMEDRIVER", "/usr/bin/chromedriver")
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium of `width`×`height`.
    pub async fn start(width: u32, height: u32) -> Result<Browser> {
        let driver = driver_path();
        if !Path::new(&driver).exists() {
            bail!("no ChromeDriver at {driver}: run deploy/local/browser (Debian's chromium and chromium-driver)");
        }
        let port = crate::process::free_port()?;
        // Its own process group, so that Chromium goes with it on drop.
        let child = tokio::process::Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {driver}"))?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .map(|v| v["value"]["ready"] == true),
                Err(_) => None,
            };
            if ready == Some(true) {
                break;
            }
            if Instant::now() > deadline {
                bail!("ChromeDriver did not get ready on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let chromium = crate::env_or("KILN_CHROMIUM", "/usr/bin/chromium");
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                ],
            },
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let session = answer["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no WebDriver session: {answer}"))?;
        Ok(Browser {
            http,
            session: format!("{base}/session/{session}"),
            driver: child,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let answer: Value = req.send().await?.json().await?;
        if let Some(error) = answer["value"]["error"].as_str() {
            bail!(
                "WebDriver {method} {path}: {error}: {}",
                answer["value"]["message"]
            );
        }
        Ok(answer["value"].clone())
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn open(&self, url: &str) -> Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    /// The first element matching the CSS `selector`, if any.
    pub async fn find(&self, selector: &str) -> Result<Option<Element>> {
        let found = self
            .post(
                "/elements",
                json!({ "using": "css selector", "value": selector }),
            )
            .await?;
        Ok(found
            .as_array()
            .and_then(|a| a.first())
            .and_then(|e| e[ELEMENT].as_str())
            .map(|id| Element(id.to_string())))
    }

    /// Waits up to `wait` for an element matching `selector`.
    pub async fn wait_for(&self, selector: &str, wait: Duration) -> Result<Element> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(e) = self.find(selector).await? {
                return Ok(e);
            }
            if Instant::now() > deadline {
                bail!("no {selector} on the page within {wait:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the first element matching `selector`, waiting up to `wait`
    /// for one; an element the page replaced between finding and clicking
    /// (a stale reference) is found again.
    pub async fn click_on(&self, selector: &str, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            let e = self.wait_for(selector, wait).await?;
            match self.click(&e).await {
                Err(err)
                    if err.to_string().contains("stale element") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                done => return done,
            }
        }
    }

    pub async fn click(&self, e: &Element) -> Result<()> {
        self.post(&format!("/element/{}/click", e.0), json!({}))
            .await
            .map(drop)
    }

    pub async fn type_into(&self, e: &Element, text: &str) -> Result<()> {
        self.post(&format!("/element/{}/value", e.0), json!({ "text": text }))
            .await
            .map(drop)
    }

    pub async fn text(&self, e: &Element) -> Result<String> {
        let v = self.get(&format!("/element/{}/text", e.0)).await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the
    /// page and answers what it returns.
    pub async fn eval(&self, script: &str, args: Value) -> Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Waits up to `wait` until `script` returns true.
    pub async fn wait_until(&self, what: &str, script: &str, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            if self.eval(script, json!([])).await? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the page never showed {what} within {wait:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the window, written to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let data = self.get("/screenshot").await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().context("a screenshot is base64 text")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session (Chromium quits) and the driver.
    pub async fn close(self) -> Result<()> {
        let _ = self.call(reqwest::Method::DELETE, "", None).await;
        Ok(())
    }
}

impl Drop for Browser {
    /// Kills the driver's process group: the driver and any Chromium it
    /// started, also when a test fails before `close`.
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}
