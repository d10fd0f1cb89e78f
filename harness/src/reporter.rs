//! Progress on stderr: each step with the time since the start, tool output only when
//! verbose (or as one self-overwriting status line on a terminal).

use images::Progress;
use std::io::IsTerminal;
use std::time::Instant;

/// Prints steps with elapsed time on stderr; tool output only when verbose, or as a
/// self-overwriting status line on a terminal.
#[derive(Debug)]
pub struct Reporter {
    start: Instant,
    verbose: bool,
    tty: bool,
    quiet: bool,
}

impl Reporter {
    pub fn new(verbose: bool, quiet: bool) -> Self {
        Self {
            start: Instant::now(),
            verbose,
            tty: std::io::stderr().is_terminal(),
            quiet,
        }
    }

    fn clear_line(&self) {
        if self.tty && !self.verbose {
            eprint!("\r\x1b[2K");
        }
    }
}

impl Progress for Reporter {
    fn step(&mut self, what: &str) {
        if self.quiet {
            return;
        }
        self.clear_line();
        eprintln!("[{:6.1}s] {what}", self.start.elapsed().as_secs_f64());
    }

    fn line(&mut self, text: &str) {
        if self.verbose {
            eprintln!("          {text}");
        } else if self.tty && !self.quiet {
            let t: String = text.chars().take(100).collect();
            eprint!("\r\x1b[2K          {t}");
        }
    }
}
