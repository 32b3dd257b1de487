//! A real browser for end-to-end tests of a page: Debian's `chromium`, headless, driven
//! over the Chrome DevTools Protocol on a pipe (`--remote-debugging-pipe`: JSON messages
//! ended by a NUL byte, commands on its fd 3, answers on its fd 4), so no driver and no
//! WebSocket library is needed. Clicks and typing are input events, as a person's are.
//!
//! Blocking: use it from `tokio::task::spawn_blocking`. `CHROMIUM` names the binary
//! (default `chromium` on the `PATH`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// How long one command may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless browser with one page.
pub struct Browser {
    child: Child,
    commands: ChildStdin,
    answers: Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    profile: std::path::PathBuf,
}

impl Browser {
    /// Starts the browser with a fresh profile and a `width`×`height` window.
    pub fn start(width: u32, height: u32) -> Self {
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
        let profile =
            std::env::temp_dir().join(format!("browser-{}", uuid::Uuid::new_v4().simple()));
        // The shell hands our two pipes to the browser as its fds 3 and 4.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} ({e}): apt-get install chromium"));
        let commands = child.stdin.take().expect("its command pipe");
        let mut from = BufReader::new(child.stdout.take().expect("its answer pipe"));
        let (tx, answers) = channel();
        std::thread::spawn(move || {
            let mut message = Vec::new();
            while from.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop();
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && tx.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        Self {
            child,
            commands,
            answers,
            next_id: 1,
            session: None,
            profile,
        }
    }

    /// Sends a command (to the page once one is open) and returns its result; panics on
    /// an error or no answer.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("JSON");
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .and_then(|()| self.commands.flush())
            .unwrap_or_else(|e| panic!("the browser is gone ({e})"));
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                // Events (no id) and answers to others are not ours.
                Ok(answer) if answer["id"] == json!(id) => {
                    if let Some(error) = answer.get("error") {
                        panic!("{method}: {error}");
                    }
                    return answer["result"].clone();
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{method}: no answer in {ANSWER_TIMEOUT:?}")
                }
                Err(RecvTimeoutError::Disconnected) => panic!("{method}: the browser exited"),
            }
        }
    }

    /// Opens `url` in a new page; later commands go to it.
    pub fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({"url": url}));
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        self.session = attached["sessionId"].as_str().map(str::to_owned);
        assert!(self.session.is_some(), "attached to the page: {attached}");
    }

    /// The value of a JavaScript expression on the page.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(thrown) = result.get("exceptionDetails") {
            panic!("{expression}: {thrown}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` every 100 ms until it is truthy, for at most `timeout`; panics
    /// with `what` and the page's text otherwise.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, expression: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expression);
            if !matches!(value, Value::Null | Value::Bool(false)) && value != json!("") {
                return value;
            }
            if Instant::now() >= deadline {
                let text = self.eval("document.body ? document.body.innerText : ''");
                panic!("timed out after {timeout:?} waiting for {what}; the page: {text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the middle of the first element matching `selector`, with the mouse.
    pub fn click(&mut self, selector: &str) {
        let at = self.wait_until(
            &format!("{selector} on the page"),
            Duration::from_secs(10),
            &format!(
                "(() => {{ const e = document.querySelector({selector:?}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ),
        );
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": at[0], "y": at[1], "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Clicks into the field `selector`, selects what it holds and types `text` over it.
    pub fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector);
        self.eval(&format!("document.querySelector({selector:?}).select()"));
        self.call("Input.insertText", json!({"text": text}));
    }

    /// Writes a PNG of the page as it is shown to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("image data"))
            .expect("base64");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
