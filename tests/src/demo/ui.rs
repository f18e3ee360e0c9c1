//! Console output a person can follow: numbered steps, the commands run with their real output,
//! and the checks made from what the cluster reports.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Ui {
    interactive: bool,
    color: bool,
    steps: usize,
    current: Mutex<String>,
}

/// `1.23s`.
pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

impl Ui {
    pub fn new(interactive: bool, steps: usize) -> Ui {
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(1) } == 1;
        Ui {
            interactive,
            color: tty && std::env::var_os("NO_COLOR").is_none(),
            steps,
            current: Mutex::new("starting".into()),
        }
    }

    pub fn style(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// The step being run, for failure messages.
    pub fn current_step(&self) -> String {
        self.current.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn step(&self, n: usize, title: &str, why: &[&str]) {
        let head = format!("Step {n}/{}: {title}", self.steps);
        if let Ok(mut c) = self.current.lock() {
            *c = head.clone();
        }
        println!("\n{}", self.style("1;36", &format!("== {head}")));
        for line in why {
            println!("   {line}");
        }
    }

    pub fn say(&self, text: &str) {
        println!("   {text}");
    }

    /// A check that passed, from what the cluster reported.
    pub fn ok(&self, text: &str, since: Instant) {
        println!(
            "   {} {text} ({})",
            self.style("32", "ok"),
            secs(since.elapsed())
        );
    }

    /// Indented block (command output, YAML).
    pub fn block(&self, text: &str) {
        for line in text.trim_end().lines() {
            println!("      {line}");
        }
    }

    pub fn command(&self, cmd: &str) {
        println!("   {}", self.style("2", &format!("$ {cmd}")));
    }

    /// Waits for Enter when a person is watching.
    pub async fn pause(&self, what: &str) {
        if !self.interactive {
            return;
        }
        print!(
            "\n   {}",
            self.style(
                "33",
                &format!("Press Enter {what} (Ctrl-C stops the demo and cleans up) ")
            )
        );
        let _ = std::io::stdout().flush();
        // A blocking read on its own thread: the pause stays cancellable by Ctrl-C.
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)
        })
        .await;
    }
}
