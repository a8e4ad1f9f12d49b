use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = brokerbench::cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("Error: could not start the async runtime: {err}");
            return ExitCode::from(brokerbench::exit::CANNOT_RUN);
        }
    };
    match runtime.block_on(brokerbench::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::from(brokerbench::exit::CANNOT_RUN)
        }
    }
}
