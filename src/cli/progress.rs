//! Progress of long work, drawn on a terminal only: when stderr is not one (a log file, a
//! container's log, a pipe) nothing is drawn and the work's own log lines say what was done.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar refreshed from a `(done, total)` source; a spinner while the total is 0.
pub struct Progress {
    bar: ProgressBar,
    poller: Option<std::thread::JoinHandle<()>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Progress {
    pub fn start(what: &str, source: impl Fn() -> (u64, u64) + Send + 'static) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if bar.is_hidden() {
            return Progress {
                bar,
                poller: None,
                stop,
            };
        }
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {pos}/{len} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        let (b, s) = (bar.clone(), stop.clone());
        let poller = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let (done, total) = source();
                if total > 0 {
                    b.set_length(total);
                    b.set_position(done.min(total));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Progress {
            bar,
            poller: Some(poller),
            stop,
        }
    }

    /// A spinner for work whose size is not known.
    pub fn spinner(what: &str) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if !bar.is_hidden() {
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Progress {
            bar,
            poller: None,
            stop: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    pub fn finish(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(p) = self.poller {
            let _ = p.join();
        }
        self.bar.finish_and_clear();
    }
}
