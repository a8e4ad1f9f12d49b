use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: the clients allocate per
/// message (frames, buffers, futures), and glibc's malloc was a fifth of
/// brokerbench's CPU at 170k msg/s (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = brokerbench::cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("Error: could not start the async runtime: {err}");
            return ExitCode::from(brokerbench::exit::CANNOT_RUN);
        }
    };
    let code = match runtime.block_on(brokerbench::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::from(brokerbench::exit::CANNOT_RUN)
        }
    };
    // Blocking client calls (librdkafka closing against a dead broker) must
    // not keep the process alive after the work is done.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}
