//! The `viewcast` binary: parse the command line, run the library.

use clap::Parser;

/// mimalloc: the hot paths allocate a row and its text values per change; with the system
/// allocator, decoding a Materialize feed ran at 0.9 M changes/s on one core, with mimalloc at
/// 1.3–1.4 M (BENCHMARKS.md, `feed-bench parse`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = viewcast::cli::Cli::parse();
    match viewcast::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
