//! Thin entry point: parse, run, map the outcome to an exit code.

fn main() {
    let code = m365send::app::main_with(std::env::args_os().collect());
    std::process::exit(code);
}
