//! Polling instead of fixed sleeps: tests wait exactly as long as they must, and a
//! bounded time at most.

use std::time::{Duration, Instant};

/// Polls `cond` (10 ms, backing off to 200 ms) until it is true; panics after
/// `timeout` with `what` in the message.
pub fn wait_for(mut cond: impl FnMut() -> bool, timeout: Duration, what: &str) {
    wait_for_some(|| cond().then_some(()), timeout, what)
}

/// Polls `f` until it returns `Some`, and returns that value; panics after `timeout`.
pub fn wait_for_some<T>(f: impl FnMut() -> Option<T>, timeout: Duration, what: &str) -> T {
    match try_wait_for_some(f, timeout) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Like [`wait_for_some`] but returns `None` on timeout instead of panicking.
pub fn try_wait_for_some<T>(mut f: impl FnMut() -> Option<T>, timeout: Duration) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(delay.min(deadline - now));
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds() {
        let mut n = 0;
        let v = wait_for_some(
            || {
                n += 1;
                (n >= 3).then_some(n)
            },
            Duration::from_secs(5),
            "three calls",
        );
        assert_eq!(v, 3);
    }

    #[test]
    fn gives_up_after_the_timeout() {
        let start = Instant::now();
        let r: Option<()> = try_wait_for_some(|| None, Duration::from_millis(100));
        assert!(r.is_none());
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    #[should_panic(expected = "timed out after 50ms waiting for nothing")]
    fn panics_with_what_it_waited_for() {
        wait_for(|| false, Duration::from_millis(50), "nothing");
    }
}
