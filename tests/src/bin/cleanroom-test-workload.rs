//! Workloads of known shape for the integration tests, each printing what the kernel itself
//! says it cost (`getrusage`) as one JSON line on stdout.
//!
//! `spin SECS`     busy loop for SECS of wall time
//! `sleepy N MS`   sleep N times for MS milliseconds

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

fn rusage_json() -> String {
    // SAFETY: zeroed rusage is a valid value; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid and writable.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |tv: libc::timeval| tv.tv_sec * 1_000_000 + tv.tv_usec;
    format!(
        r#"{{"nvcsw":{},"nivcsw":{},"minflt":{},"majflt":{},"utime_us":{},"stime_us":{}}}"#,
        ru.ru_nvcsw,
        ru.ru_nivcsw,
        ru.ru_minflt,
        ru.ru_majflt,
        us(ru.ru_utime),
        us(ru.ru_stime)
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> u64 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("argument {i} must be a number: {args:?}"))
    };
    match args.first().map(String::as_str) {
        Some("spin") => {
            let until = Instant::now() + Duration::from_secs(num(1));
            let mut x = 0u64;
            while Instant::now() < until {
                for _ in 0..10_000 {
                    x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
                }
            }
        }
        Some("sleepy") => {
            for _ in 0..num(1) {
                std::thread::sleep(Duration::from_millis(num(2)));
            }
        }
        other => panic!("unknown workload {other:?}; see the module doc"),
    }
    println!("{}", rusage_json());
}
