//! Thin entry point: parse, run, map the outcome to an exit code.

fn main() {
    // A caller may start us with SIGCHLD ignored (swaks --pipe does); then the exit status of
    // a secret `command` would be lost and a failure would look like success. Restore it.
    // SAFETY: setting a signal disposition to SIG_DFL before any thread exists.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
    let code = m365send::app::main_with(std::env::args_os().collect());
    std::process::exit(code);
}
