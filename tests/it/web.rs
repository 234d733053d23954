//! The web view (issue 26) in a real browser: Debian's headless Chromium over WebDriver, against
//! `stagehand serve` on the real kube-apiserver and a real Git remote.

use serde_json::json;

use crate::support::browser::Chromedriver;

/// A `data:` URL holding `html`, every byte but letters and digits percent-encoded.
fn data_url(html: &str) -> String {
    let mut url = String::from("data:text/html;charset=utf-8,");
    for b in html.bytes() {
        if b.is_ascii_alphanumeric() {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// The harness itself: two sessions at once, each waiting for what its page's script adds a
/// moment later, JavaScript state kept across the wait, a screenshot written as a PNG file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_harness_drives_two_headless_sessions_at_once() {
    let driver = Chromedriver::start();
    let one = driver.session("one").await;
    let two = driver.session("two").await;
    for (browser, word) in [(&one, "first"), (&two, "second")] {
        browser
            .goto(&data_url(&format!(
                "<!doctype html><title>{word}</title><main><p class=late>waiting</p></main>\
                 <script>setTimeout(() => {{ document.querySelector('.late').textContent = \
                 'arrived {word}'; }}, 300)</script>"
            )))
            .await;
        browser
            .execute("window.__marker = arguments[0]", vec![json!(word)])
            .await;
    }
    assert_eq!(
        two.wait_for_text(".late", "arrived").await,
        "arrived second"
    );
    assert_eq!(one.wait_for_text(".late", "arrived").await, "arrived first");
    // Each session kept its own page's state through the wait: no reload, no shared window.
    assert_eq!(one.execute("return window.__marker", vec![]).await, "first");
    assert_eq!(
        two.execute("return window.__marker", vec![]).await,
        "second"
    );
    assert!(one.source().await.contains("arrived first"));
    assert_eq!(one.texts("p").await, ["arrived first"]);
    assert_eq!(two.count("main p").await, 1);
    assert_eq!(one.open_dialog().await, None);
    let shot = one.screenshot("harness").await;
    assert!(std::fs::metadata(&shot).expect("written").len() > 1000);
    one.quit().await;
    two.quit().await;
}
