//! `ferric-bench`: measures an Ironic-compatible API. Exits non-zero only
//! when the run itself fails (an HTTP error, a failed deploy), never because
//! a figure misses its target.

mod bench;
mod cli;
mod client;
mod ironic;
mod pool;
mod report;
mod rss;
mod stats;

use clap::Parser;
use std::process::ExitCode;

// One thread: the load generator shares the machine with the server it
// measures and should take as little CPU from it as it can.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = cli::Args::parse();
    let endpoint =
        match client::Endpoint::parse(&args.url, &args.api_version, args.request_timeout()) {
            Ok(e) => e,
            Err(e) => return fail(&e.into()),
        };
    let mut bench = bench::Bench::new(endpoint, args.settings());
    let measured = bench.measure().await;
    let cleaned = if args.cleanup {
        bench.cleanup().await
    } else {
        Ok(())
    };

    let mut code = ExitCode::SUCCESS;
    match measured {
        Ok(report) if args.json => println!("{}", report.to_json()),
        Ok(report) => print!("{}", report.to_text()),
        Err(e) => code = fail(&e),
    }
    if let Err(e) = cleaned {
        code = fail(&e.context("cleanup failed"));
    }
    code
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("ferric-bench: error: {error:#}");
    ExitCode::FAILURE
}
