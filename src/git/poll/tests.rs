use super::*;
use std::sync::Mutex;
use std::sync::mpsc;

/// A fetch function that counts its runs and waits for the test to let each one finish.
fn gated() -> (
    impl Fn() -> u64 + Send + Sync,
    Arc<AtomicU64>,
    mpsc::Sender<()>,
) {
    let runs = Arc::new(AtomicU64::new(0));
    let (open, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let counter = runs.clone();
    let fetch = move || {
        let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
        gate.lock()
            .expect("one fetch at a time")
            .recv()
            .expect("the test keeps the gate");
        run
    };
    (fetch, runs, open)
}

async fn until(check: impl Fn() -> bool) {
    while !check() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn requests_made_during_a_fetch_share_one_follow_up_fetch() {
    let (fetch, runs, open) = gated();
    let poller = Arc::new(Poller::spawn(Duration::from_secs(3600), fetch, |_| 0));
    // The first, periodic fetch is running and held at the gate.
    until(|| runs.load(Ordering::SeqCst) == 1).await;
    let callers: Vec<_> = (0..5)
        .map(|_| {
            let poller = poller.clone();
            tokio::spawn(async move { poller.fetch_now().await })
        })
        .collect();
    until(|| poller.requested.load(Ordering::SeqCst) == 5).await;
    open.send(()).expect("fetch 1 waits");
    until(|| runs.load(Ordering::SeqCst) == 2).await;
    open.send(()).expect("fetch 2 waits");
    for caller in callers {
        // Fetch 1 started before they asked, so each is answered by fetch 2.
        assert_eq!(caller.await.expect("caller finishes"), 2);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn without_requests_the_repository_is_fetched_again_and_again() {
    let runs = Arc::new(AtomicU64::new(0));
    let counter = runs.clone();
    let poller = Poller::spawn(
        Duration::from_millis(20),
        move || counter.fetch_add(1, Ordering::SeqCst) + 1,
        |_| 0,
    );
    let mut done = poller.subscribe();
    // Generous bound: only a poller that stops fetching by itself misses it.
    tokio::time::timeout(
        Duration::from_secs(30),
        done.wait_for(|c| c.as_ref().is_some_and(|c| c.result >= 3)),
    )
    .await
    .expect("three periodic fetches happen")
    .expect("the poller runs");
    assert_eq!(poller.requested.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_fetch_that_panics_is_answered_as_an_error_and_the_loop_goes_on() {
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trap = armed.clone();
    let poller = Poller::spawn(
        Duration::from_secs(3600),
        move || -> Result<(), String> {
            assert!(
                !trap.swap(false, Ordering::SeqCst),
                "found a corrupt object"
            );
            Ok(())
        },
        Err,
    );
    poller.fetch_now().await.expect("a first fetch");
    // A fetch already queued may take the trap; arm it again until a request meets it.
    let mut failed = None;
    for _ in 0..10 {
        armed.store(true, Ordering::SeqCst);
        if let Err(message) = poller.fetch_now().await {
            failed = Some(message);
            break;
        }
    }
    let failed = failed.expect("a fetch that panicked is answered with an error");
    assert!(failed.contains("found a corrupt object"), "{failed}");
    armed.store(false, Ordering::SeqCst);
    poller
        .fetch_now()
        .await
        .expect("the loop still fetches after a panic");
}
