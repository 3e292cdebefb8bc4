//! A real headless Chromium driven over the Chrome DevTools Protocol, for
//! the web console's tests (ADR 0034): Debian's `chromium`, a throwaway
//! profile, one page. Besides navigating, evaluating, clicking and typing,
//! it records every request the page makes and every error the page's
//! console logs (CSP violations among them), so a test can check that
//! nothing left for another origin and nothing was refused.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use futures::SinkExt;
use futures::stream::{SplitSink, StreamExt};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// How long Chromium may take to start and say where it listens.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long one protocol command may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(30);
/// How long [`Browser::click`] aims again at an element that moved or was
/// covered.
const CLICK_SETTLE: Duration = Duration::from_secs(5);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;
type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;

/// What the page did, as the protocol's events told it.
#[derive(Debug, Default, Clone)]
pub struct PageRecord {
    /// The URL of every request the page made, in order.
    pub requests: Vec<String>,
    /// Console errors, uncaught exceptions and browser log errors (CSP
    /// violations are among these), as text.
    pub errors: Vec<String>,
}

impl PageRecord {
    /// The errors that are Content-Security-Policy violations.
    pub fn csp_violations(&self) -> Vec<&str> {
        self.errors
            .iter()
            .map(String::as_str)
            .filter(|error| error.contains("Content Security Policy"))
            .collect()
    }
}

/// The Chromium process, killed when dropped (also when starting fails
/// half-way).
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium with one page open; killed on drop.
pub struct Browser {
    _process: Process,
    _profile: TempDir,
    sink: Arc<tokio::sync::Mutex<Sink>>,
    pending: Pending,
    record: Arc<Mutex<PageRecord>>,
    next_id: AtomicU64,
    /// The flattened session of the page target.
    session: String,
    /// Chromium's stderr after its first line, for a failure's message.
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Browser {
    /// Starts Chromium and opens a page that trusts any certificate (tests
    /// reach tetherd by its own CA, which the profile does not know).
    /// Fails naming the package when Chromium is not installed.
    pub async fn start() -> anyhow::Result<Self> {
        let program = chromium()?;
        let profile = tempfile::Builder::new()
            .prefix("chromium-")
            .tempdir()
            .context("creating a Chromium profile dir")?;
        let mut command = Command::new(&program);
        command
            .arg("--headless=new")
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args([
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-gpu",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--mute-audio",
                "--window-size=1280,800",
            ]);
        // Chromium's sandbox refuses to run as root; the tests do when
        // they install packages.
        if crate::postgres::running_as_root()? {
            command.arg("--no-sandbox");
        }
        let mut process = Process(
            command
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", program.display()))?,
        );
        let stderr = process.0.stderr.take().context("Chromium's stderr")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (listening, url) = oneshot::channel();
        let seen = lines.clone();
        std::thread::spawn(move || {
            let mut listening = Some(listening);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match line.strip_prefix("DevTools listening on ") {
                    Some(url) if listening.is_some() => {
                        if let Some(sender) = listening.take() {
                            let _ = sender.send(url.trim().to_owned());
                        }
                    }
                    _ => seen.lock().expect("stderr lines").push(line),
                }
            }
        });
        let url = match tokio::time::timeout(START_DEADLINE, url).await {
            Ok(Ok(url)) => url,
            _ => {
                drop(process);
                bail!(
                    "Chromium did not say where its DevTools listen within {START_DEADLINE:?}; its stderr:\n{}",
                    lines.lock().expect("stderr lines").join("\n")
                );
            }
        };
        let mut browser = Self::connect(process, profile, &url, lines).await?;
        browser.open_page().await?;
        Ok(browser)
    }

    async fn connect(
        process: Process,
        profile: TempDir,
        url: &str,
        stderr: Arc<Mutex<Vec<String>>>,
    ) -> anyhow::Result<Self> {
        let authority = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .with_context(|| format!("a DevTools URL {url:?}"))?;
        let stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to Chromium's DevTools at {authority}"))?;
        let (socket, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .context("opening the DevTools WebSocket")?;
        let (sink, mut stream) = socket.split();
        let pending: Pending = Arc::default();
        let record = Arc::new(Mutex::new(PageRecord::default()));
        let (answers, events) = (pending.clone(), record.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(message) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = message["id"].as_u64() {
                    let answer = match message.get("error") {
                        Some(error) => Err(error.to_string()),
                        None => Ok(message["result"].clone()),
                    };
                    if let Some(waiting) = answers.lock().expect("pending").remove(&id) {
                        let _ = waiting.send(answer);
                    }
                } else if let Some(method) = message["method"].as_str() {
                    events
                        .lock()
                        .expect("page record")
                        .note(method, &message["params"]);
                }
            }
            // The connection is gone: whoever still waits hears so at once.
            answers.lock().expect("pending").clear();
        });
        Ok(Self {
            _process: process,
            _profile: profile,
            sink: Arc::new(tokio::sync::Mutex::new(sink)),
            pending,
            record,
            next_id: AtomicU64::new(1),
            session: String::new(),
            stderr,
        })
    }

    async fn open_page(&mut self) -> anyhow::Result<()> {
        let target = self
            .send(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = target["targetId"].as_str().context("a target id")?;
        let attached = self
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        self.session = attached["sessionId"]
            .as_str()
            .context("a session id")?
            .to_owned();
        for domain in [
            "Page.enable",
            "Runtime.enable",
            "Log.enable",
            "Network.enable",
        ] {
            self.call(domain, json!({})).await?;
        }
        self.call(
            "Security.setIgnoreCertificateErrors",
            json!({"ignore": true}),
        )
        .await?;
        Ok(())
    }

    /// Sends a command to the page and answers its result.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.send(Some(&self.session), method, params).await
    }

    async fn send(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (answer, answered) = oneshot::channel();
        self.pending.lock().expect("pending").insert(id, answer);
        self.sink
            .lock()
            .await
            .send(Message::Text(message.to_string().into()))
            .await
            .with_context(|| format!("sending {method} to Chromium"))?;
        match tokio::time::timeout(COMMAND_DEADLINE, answered).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => bail!("Chromium refused {method}: {error}"),
            Ok(Err(_)) => bail!(
                "Chromium closed the DevTools connection during {method}; its stderr:\n{}",
                self.stderr.lock().expect("stderr lines").join("\n")
            ),
            Err(_) => bail!("Chromium did not answer {method} within {COMMAND_DEADLINE:?}"),
        }
    }

    /// Loads `url` and waits until its document has loaded.
    pub async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        let answer = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(error) = answer["errorText"].as_str().filter(|e| !e.is_empty()) {
            bail!("loading {url} failed: {error}");
        }
        self.wait_for_true(
            &format!("{url} to load"),
            "document.readyState === 'complete'",
            COMMAND_DEADLINE,
        )
        .await
    }

    /// Evaluates a JavaScript expression in the page (awaiting a promise)
    /// and answers its value as JSON; a thrown exception is an error.
    pub async fn evaluate(&self, expression: &str) -> anyhow::Result<Value> {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(exception) = answer.get("exceptionDetails") {
            let description = exception["exception"]["description"]
                .as_str()
                .or(exception["text"].as_str())
                .unwrap_or("an exception");
            bail!("evaluating {expression:?} threw {description}");
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Waits until `expression` evaluates to `true`.
    pub async fn wait_for_true(
        &self,
        what: &str,
        expression: &str,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        crate::wait_until(what, deadline, || async {
            Ok((self.evaluate(expression).await? == json!(true)).then_some(()))
        })
        .await
    }

    /// Waits until an element matches `selector`.
    pub async fn wait_for_selector(
        &self,
        selector: &str,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        self.wait_for_true(
            &format!("an element matching {selector}"),
            &format!("document.querySelector({}) !== null", json!(selector)),
            deadline,
        )
        .await
    }

    /// Waits until the first element matching `selector` contains `text`,
    /// and answers its whole text.
    pub async fn wait_for_text(
        &self,
        selector: &str,
        text: &str,
        deadline: Duration,
    ) -> anyhow::Result<String> {
        let expression = format!(
            "document.querySelector({})?.textContent ?? null",
            json!(selector)
        );
        crate::wait_until(
            &format!("{selector} to contain {text:?}"),
            deadline,
            || async {
                let found = self.evaluate(&expression).await?;
                Ok(found
                    .as_str()
                    .filter(|found| found.contains(text))
                    .map(str::to_owned))
            },
        )
        .await
    }

    /// Clicks the middle of the first element matching `selector` with the
    /// mouse, as a person would (scrolled into view first). A page still
    /// laying itself out (a log growing above, a chart arriving) can move
    /// the element between finding it and clicking: the click is aimed only
    /// where the element is on top, checked to have reached it, and aimed
    /// again otherwise, for up to [`CLICK_SETTLE`].
    pub async fn click(&self, selector: &str) -> anyhow::Result<()> {
        let aim = format!(
            "(() => {{ const element = document.querySelector({}); if (!element) return null; \
             element.scrollIntoView({{block: 'center'}}); const box = element.getBoundingClientRect(); \
             const x = box.x + box.width / 2, y = box.y + box.height / 2; \
             const top = document.elementFromPoint(x, y); \
             if (!top || !(top === element || element.contains(top))) return 'covered'; \
             window.__tetherClicked = false; \
             element.addEventListener('click', () => {{ window.__tetherClicked = true; }}, {{once: true, capture: true}}); \
             return [x, y]; }})()",
            json!(selector)
        );
        let deadline = tokio::time::Instant::now() + CLICK_SETTLE;
        loop {
            let point = self.evaluate(&aim).await?;
            if point.is_null() {
                bail!("nothing to click: no element matches {selector}");
            }
            if let (Some(x), Some(y)) = (point[0].as_f64(), point[1].as_f64()) {
                for kind in ["mousePressed", "mouseReleased"] {
                    self.call(
                        "Input.dispatchMouseEvent",
                        json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
                    )
                    .await?;
                }
                // A click that navigated away took the flag with the page.
                let reached = self.evaluate("window.__tetherClicked !== false").await?;
                if reached == json!(true) {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "could not click {selector}: something else stayed on top of it or it kept moving"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Focuses the first element matching `selector`, empties it and types
    /// `text` into it.
    pub async fn type_text(&self, selector: &str, text: &str) -> anyhow::Result<()> {
        let focused = self
            .evaluate(&format!(
                "(() => {{ const element = document.querySelector({}); if (!element) return false; \
                 element.focus(); element.select?.(); return true; }})()",
                json!(selector)
            ))
            .await?;
        if focused != json!(true) {
            bail!("nothing to type into: no element matches {selector}");
        }
        self.call("Input.insertText", json!({"text": text})).await?;
        Ok(())
    }

    /// Presses and releases a key: `Enter`, `Tab` or `Escape`.
    pub async fn press(&self, key: &str) -> anyhow::Result<()> {
        let (code, text) = match key {
            "Enter" => (13, "\r"),
            "Tab" => (9, ""),
            "Escape" => (27, ""),
            other => bail!("press knows Enter, Tab and Escape, not {other:?}"),
        };
        let mut down =
            json!({"type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code});
        if !text.is_empty() {
            down["text"] = json!(text);
        }
        self.call("Input.dispatchKeyEvent", down).await?;
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code}),
        )
        .await?;
        Ok(())
    }

    /// Makes the page `width` × `height` CSS pixels (a phone is 390 wide).
    pub async fn set_viewport(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await?;
        Ok(())
    }

    /// The page as a PNG.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let answer = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let data = answer["data"].as_str().context("screenshot data")?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("decoding the screenshot")
    }

    /// What the page requested and logged so far.
    pub fn record(&self) -> PageRecord {
        self.record.lock().expect("page record").clone()
    }
}

impl PageRecord {
    fn note(&mut self, method: &str, params: &Value) {
        match method {
            "Network.requestWillBeSent" => {
                if let Some(url) = params["request"]["url"].as_str() {
                    self.requests.push(url.to_owned());
                }
            }
            "Log.entryAdded" if params["entry"]["level"] == "error" => {
                let entry = &params["entry"];
                self.errors.push(format!(
                    "{} ({}): {}",
                    entry["source"].as_str().unwrap_or("log"),
                    entry["url"].as_str().unwrap_or(""),
                    entry["text"].as_str().unwrap_or("")
                ));
            }
            "Runtime.consoleAPICalled" if params["type"] == "error" => {
                let text: Vec<String> = params["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|arg| {
                        arg["value"]
                            .as_str()
                            .map(str::to_owned)
                            .or_else(|| arg["description"].as_str().map(str::to_owned))
                            .unwrap_or_else(|| arg["value"].to_string())
                    })
                    .collect();
                self.errors
                    .push(format!("console.error: {}", text.join(" ")));
            }
            "Runtime.exceptionThrown" => {
                let details = &params["exceptionDetails"];
                self.errors.push(format!(
                    "uncaught: {}",
                    details["exception"]["description"]
                        .as_str()
                        .or(details["text"].as_str())
                        .unwrap_or("an exception")
                ));
            }
            _ => {}
        }
    }
}

/// Chromium on PATH (Debian's `chromium`, or `chromium-browser`).
fn chromium() -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "chromium is not installed: the web console's tests drive it; install it with \
         `apt-get install chromium` (./scripts/test does when run as root)"
    )
}
