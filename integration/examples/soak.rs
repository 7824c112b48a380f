//! `bash integration/soak.sh [--minutes N] [--out DIR]`: the soak run of
//! `credgate_integration::soak`, inside a node namespace (soak.sh sets it up). Prints the
//! table and writes soak.md, soak.csv and soak.svg into DIR; exits 1 when a target was
//! missed, 2 on bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use credgate_integration::soak;

fn main() -> ExitCode {
    let mut minutes = 30.0;
    let mut out = PathBuf::from("target/soak");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--minutes", Some(v)) => match v.parse::<f64>() {
                Ok(m) if m > 0.0 && m <= 24.0 * 60.0 => minutes = m,
                _ => return usage(&format!("--minutes {v:?} is not a number of minutes")),
            },
            ("--out", Some(v)) => out = PathBuf::from(v),
            (other, _) => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let report = soak::run(minutes);
    println!("{}", report.table());
    for failure in &report.failures {
        println!("failed: {failure}");
    }
    match soak::write_report(&report, &out) {
        Ok(files) => {
            for file in files {
                println!("wrote {}", file.display());
            }
        }
        Err(e) => {
            eprintln!("soak: cannot write the report into {}: {e}", out.display());
            return ExitCode::from(1);
        }
    }
    let missed = report.missed();
    if missed.is_empty() {
        println!("soak: every target met");
        ExitCode::SUCCESS
    } else {
        for why in &missed {
            eprintln!("soak: missed: {why}");
        }
        ExitCode::from(1)
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("soak: {problem}; usage: bash integration/soak.sh [--minutes N] [--out DIR]");
    ExitCode::from(2)
}
