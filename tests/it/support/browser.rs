//! Headless Chromium driven over WebDriver, as a person's browser: Debian's `chromium` and
//! `chromedriver` (scripts/setup.sh installs both), sessions opened through `thirtyfour`.
//!
//! One chromedriver per test: nextest runs every test in a process of its own, and chromedriver
//! starts in a few milliseconds; the browsers themselves are what cost, and a test opens only
//! the sessions it needs. chromedriver, the browsers it starts and a watchdog share one process
//! group, killed as a whole when the [`Chromedriver`] is dropped, or by the watchdog once the
//! test process is gone however it ended.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use thirtyfour::error::WebDriverErrorInner;
use thirtyfour::prelude::*;

use crate::support::cluster::install_crypto_provider;
use crate::support::{Tool, tool};

/// How long a wait for the page lasts before the test fails: only a page that never gets there
/// reaches it.
const DEADLINE: Duration = Duration::from_secs(30);

/// A running chromedriver on a loopback port of its choosing.
pub struct Chromedriver {
    child: Child,
    watchdog: Child,
    url: String,
    profiles: tempfile::TempDir,
    sessions: std::sync::atomic::AtomicU32,
}

impl Chromedriver {
    pub fn start() -> Self {
        let profiles = tempfile::tempdir().expect("temp dir");
        // Even with port 0, chromedriver can exit with "bind() failed: Address already in use"
        // (seen in a full run, other tests binding ports at the same time); a new try picks anew.
        let mut failures = Vec::new();
        for _ in 0..5 {
            match Self::try_start(&profiles) {
                Ok((child, watchdog, port)) => {
                    return Self {
                        child,
                        watchdog,
                        url: format!("http://127.0.0.1:{port}"),
                        profiles,
                        sessions: Default::default(),
                    };
                }
                Err(log) => failures.push(log),
            }
        }
        panic!("chromedriver exited before listening, 5 times: {failures:#?}");
    }

    /// Starts chromedriver with a watchdog that ends its process group once this test process
    /// is gone; the port it listens on, or its log when it exited before listening.
    fn try_start(profiles: &tempfile::TempDir) -> Result<(Child, Child, u16), String> {
        use std::os::unix::process::CommandExt;
        let log = profiles.path().join("chromedriver.log");
        let mut child = Command::new(tool(Tool::Chromedriver))
            .args(["--port=0", "--log-level=WARNING"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("chromedriver starts");
        let group = child.id();
        let mut watchdog = Command::new("bash")
            .args([
                "-c",
                "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; kill -KILL -- \"-$2\"",
                "watchdog",
            ])
            .arg(std::process::id().to_string())
            .arg(group.to_string())
            .process_group(group as i32)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the watchdog starts");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let port = loop {
            let mut line = String::new();
            let read = stdout.read_line(&mut line).expect("stdout readable");
            if read == 0 {
                let _ = child.wait();
                let _ = watchdog.kill();
                let _ = watchdog.wait();
                return Err(std::fs::read_to_string(&log).unwrap_or_default());
            }
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest
                    .trim()
                    .trim_end_matches('.')
                    .parse::<u16>()
                    .expect("a port");
            }
        };
        // Nothing more is read from it; a closed pipe would end chromedriver at its next line.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Ok((child, watchdog, port))
    }

    /// Opens a headless Chromium of its own (its own profile, so its own cookies): one
    /// identity per session.
    pub async fn session(&self, name: &str) -> Browser {
        install_crypto_provider();
        let n = self
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile = self.profiles.path().join(format!("profile-{n}"));
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(&tool(Tool::Chromium).display().to_string())
            .expect("capability set");
        for arg in [
            "--headless=new",
            // Root in a container: no user namespace for the sandbox, a small /dev/shm, no GPU.
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1280,900",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.display()),
        ] {
            caps.add_arg(arg).expect("capability set");
        }
        let driver = WebDriver::new(self.url.clone(), caps)
            .await
            .unwrap_or_else(|e| panic!("chromedriver at {} opens a session: {e}", self.url));
        Browser {
            driver,
            name: name.to_owned(),
        }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The whole group: chromedriver, every browser process it started, the watchdog.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
        let _ = self.watchdog.wait();
    }
}

/// Where the browser tests write what a person may look at: target/test-output/web/.
pub fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-output/web");
    std::fs::create_dir_all(&dir).expect("output directory");
    dir
}

/// One browser session. Every wait has a deadline; a wait that runs out saves a screenshot and
/// the page's source next to the others and names them.
pub struct Browser {
    driver: WebDriver,
    pub name: String,
}

impl Browser {
    pub async fn goto(&self, url: &str) {
        self.driver
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{}: {url} loads: {e}", self.name));
    }

    pub async fn current_url(&self) -> String {
        self.driver
            .current_url()
            .await
            .expect("the URL is readable")
            .to_string()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.driver
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{}: script {script:?} runs: {e}", self.name))
            .json()
            .clone()
    }

    /// Polls `script` until it returns something other than null, false, 0 or ""; returns it.
    pub async fn wait_until(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let value = self.execute(script, args.clone()).await;
            let done = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if done {
                return value;
            }
            if Instant::now() > deadline {
                let saved = self.save_failure(what).await;
                panic!("{}: never happened: {what} (see {saved})", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until an element matches `css`; returns the first.
    pub async fn wait_for(&self, css: &str) -> WebElement {
        self.wait_until(
            &format!("an element matches {css}"),
            "return document.querySelector(arguments[0]) !== null",
            vec![css.into()],
        )
        .await;
        self.driver
            .find(By::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: {css} is found: {e}", self.name))
    }

    /// Waits until an element matching `css` has `text` in its textContent; returns that
    /// textContent.
    pub async fn wait_for_text(&self, css: &str, text: &str) -> String {
        self.wait_until(
            &format!("an element matching {css} holds the text {text:?}"),
            "for (const e of document.querySelectorAll(arguments[0])) { \
               if (e.textContent.includes(arguments[1])) return e.textContent; } \
             return null",
            vec![css.into(), text.into()],
        )
        .await
        .as_str()
        .expect("a string")
        .to_owned()
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> usize {
        self.execute(
            "return document.querySelectorAll(arguments[0]).length",
            vec![css.into()],
        )
        .await
        .as_u64()
        .expect("a count") as usize
    }

    /// The textContent of every element matching `css`, in document order.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let value = self
            .execute(
                "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)",
                vec![css.into()],
            )
            .await;
        serde_json::from_value(value).expect("a list of strings")
    }

    /// The page's source as serialised by the browser now (after any live updates).
    pub async fn source(&self) -> String {
        self.driver
            .source()
            .await
            .unwrap_or_else(|e| panic!("{}: the page source is readable: {e}", self.name))
    }

    /// Clicks the first element matching `css` (waiting for it). A live update may replace
    /// the element between finding and clicking it; the click then goes to its replacement.
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.wait_for(css).await.click().await {
                Ok(()) => return,
                Err(e)
                    if matches!(e.as_inner(), WebDriverErrorInner::StaleElementReference(_))
                        && Instant::now() < deadline => {}
                Err(e) => panic!("{}: {css} is clicked: {e}", self.name),
            }
        }
    }

    /// Types `text` into the first element matching `css` (waiting for it).
    pub async fn type_into(&self, css: &str, text: &str) {
        self.wait_for(css)
            .await
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{}: typing into {css}: {e}", self.name));
    }

    /// The value of cookie `name`, HttpOnly ones included (WebDriver sees them, pages do not).
    pub async fn cookie(&self, name: &str) -> String {
        self.driver
            .get_named_cookie(name)
            .await
            .unwrap_or_else(|e| panic!("{}: cookie {name} is set: {e}", self.name))
            .value
    }

    /// The text of an open alert, confirm or prompt dialog, if one is open.
    pub async fn open_dialog(&self) -> Option<String> {
        self.driver.get_alert_text().await.ok()
    }

    /// Saves a screenshot as target/test-output/web/NAME.png and prints its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let path = output_dir().join(format!("{name}.png"));
        let png = self
            .driver
            .screenshot_as_png()
            .await
            .unwrap_or_else(|e| panic!("{}: a screenshot is taken: {e}", self.name));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(&path, png).expect("screenshot written");
        println!("screenshot: {}", path.display());
        path
    }

    async fn save_failure(&self, what: &str) -> String {
        let stem: String = format!("failed-{}-{what}", self.name)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(80)
            .collect();
        let html = output_dir().join(format!("{stem}.html"));
        let _ = std::fs::write(&html, self.driver.source().await.unwrap_or_default());
        let png = output_dir().join(format!("{stem}.png"));
        if let Ok(bytes) = self.driver.screenshot_as_png().await {
            let _ = std::fs::write(&png, bytes);
        }
        format!("{} and {}", png.display(), html.display())
    }

    /// Ends the session (its browser exits).
    pub async fn quit(self) {
        self.driver
            .quit()
            .await
            .unwrap_or_else(|e| panic!("{}: the session ends: {e}", self.name));
    }
}
