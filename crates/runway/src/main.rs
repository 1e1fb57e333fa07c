//! `runway`: the one binary. `serve` runs the server; the commands that manage data go through
//! the HTTP API, of a remote server (`--url`) or of the router in this process on the local store
//! (same config), where their changes are audited as the CLI user.

/// jemalloc instead of the system allocator: the request path allocates small, short-lived
/// buffers, where glibc malloc showed up as a quarter of the CPU in profiles (BENCHMARKS.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(cli::Exit(code)) = e.downcast_ref::<cli::Exit>() {
                return std::process::ExitCode::from(*code);
            }
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
