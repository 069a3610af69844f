//! `simulator`: drives the 12345 hotline federation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use simulator::demo::{self, DemoOptions};

/// Drives the 12345 hotline federation of the cities of southern Sichuan:
/// citizens' requests, operators, the provincial coordinator.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Starts the gateway and the four city nodes on loopback, drives tickets
    /// across all four cities and all 17 categories (14 hot, 3 emergency),
    /// with some matters reported again (merged by the gateway), departments
    /// that now and then miss the demo's 40 s deadline and citizens not all
    /// satisfied, and prints a table per
    /// city. Runs until Ctrl-C, or for --duration seconds.
    ///
    /// Also transfers calls between the cities' operators' consoles.
    ///
    /// Exits non-zero if any acknowledged ticket was lost or duplicated, or
    /// a transfer was left stuck past its deadline.
    Demo {
        /// Stop by itself after this many seconds (then drain and report).
        #[arg(long, value_name = "SECS")]
        duration: Option<f64>,
        /// Write the JSON report here.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Keep the stores here (default: a temporary directory, removed at
        /// the end).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Requests per second at each city's hotline.
        #[arg(long, default_value_t = 8.0)]
        rate: f64,
        /// The seed of the workload: the same seed, the same requests.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds to wait at the end for tickets in flight to arrive.
        #[arg(long, default_value_t = 30.0, value_name = "SECS")]
        drain: f64,
        /// Calls transferred per second from each city's desk to another
        /// city (0 for none).
        #[arg(long, default_value_t = 1.0, value_name = "N")]
        transfer_rate: f64,
    },
    /// Plays a scenario (simulator/scenarios/, or a TOML file) against the
    /// real `gateway` and `city-node` binaries started here (--spawn), or
    /// a federation already running (--targets FILE); faults as the
    /// scenario says (with --spawn); invariants checked live and at the
    /// end. Exits non-zero when one is violated.
    #[command(group(
        clap::ArgGroup::new("federation")
            .args(["spawn", "targets"])
            .required(true)
            .multiple(false)
    ))]
    Run {
        /// A built-in scenario (south-sichuan, province, flood-season,
        /// chaos, supervision) or a scenario file.
        #[arg(long, value_name = "NAME|FILE")]
        scenario: String,
        /// Start the gateway and a node per city as child processes (or
        /// give --targets).
        #[arg(long)]
        spawn: bool,
        /// A running federation (or give --spawn): a TOML file with
        /// `gateway`, `certs` and a `[nodes]` table (see
        /// simulator/scenarios/README.md).
        #[arg(long, value_name = "FILE")]
        targets: Option<PathBuf>,
        /// The seed of the workload: the same seed, the same requests.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulated seconds per real second (the scenario's by default).
        #[arg(long, value_name = "X")]
        speed: Option<f64>,
        /// Simulated minutes of load (the scenario's by default).
        #[arg(long, value_name = "N")]
        minutes: Option<f64>,
        /// Write the JSON report here.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Write the HTML report here.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// With --spawn: keep the stores and logs here.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Seconds to wait at the end for what is in flight.
        #[arg(long, default_value_t = 60.0, value_name = "SECS")]
        drain: f64,
    },
    /// The gateway's cost per ticket, side by side in one run: the target
    /// node called directly (A), through the gateway (B), through haproxy
    /// (C) and through nginx grpc_pass (D), each three times, interleaved;
    /// plus transfer start-to-ringing. haproxy and nginx come from the
    /// system packages (apt-get install haproxy nginx); a missing one is
    /// said and skipped. See docs/benchmarks.md.
    Bench {
        /// Finish in under two minutes (fewer requests, shorter runs).
        #[arg(long)]
        quick: bool,
        /// Write the JSON figures here.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// A full run writes its tables into this file, between its
        /// markers (default: docs/benchmarks.md, when run from the
        /// repository).
        #[arg(long, value_name = "FILE")]
        doc: Option<PathBuf>,
    },
    /// The merge detector (合并派单) on a labelled set: MATTERS matters, a
    /// third of them reported again in other words, dispatched in order into
    /// a real ledger; prints precision, recall and the gateway's time per
    /// report. See docs/benchmarks.md.
    BenchMerge {
        #[arg(long, default_value_t = 2000)]
        matters: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write the JSON figures here.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// What the merge check and the escalation rules cost per ticket at the
    /// gateway with many tickets in the ledger: fills a ledger (or reuses
    /// one kept in --data-dir), then dispatches --samples reports through
    /// the gateway's transaction, timing the checks alone and the whole
    /// dispatch. See docs/benchmarks.md.
    BenchSupervision {
        #[arg(long, default_value_t = 10_000_000)]
        tickets: u64,
        #[arg(long, default_value_t = 20_000)]
        samples: usize,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// The Observatory's queries with many tickets in the ledger: loads the
    /// ledger through the gateway's own transaction bodies (or reuses one
    /// kept in --data-dir), starts the real `gateway` binary on it and times
    /// GetCityStats per window, the flow matrix, the top categories and the
    /// overdue list, one call at a time. See docs/benchmarks.md.
    BenchStats {
        /// Tickets in the ledger.
        #[arg(long, default_value_t = 10_000_000)]
        tickets: u64,
        /// Keep (or reuse) the ledger here; a temporary directory when
        /// absent.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Calls timed per query.
        #[arg(long, default_value_t = 200)]
        calls: usize,
        /// Write the JSON figures here.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Instructions the gateway executes per dispatched ticket, counted by
    /// valgrind's callgrind: a deterministic figure for regressions. Runs
    /// N and 2N tickets under callgrind and takes the difference, REPEAT
    /// times. Needs valgrind and the release binaries.
    BenchInstructions {
        #[arg(long, default_value_t = 500)]
        tickets: u64,
        #[arg(long, default_value_t = 2)]
        repeat: usize,
        /// What the tickets say: each its own matter, every one the same
        /// matter (多人一诉, merged), or both runs.
        #[arg(long, value_enum, default_value = "both")]
        workload: simulator::instructions::Workload,
        /// Write the JSON figures here.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Keep the last callgrind profile (of 2N tickets) here, for
        /// callgrind_annotate.
        #[arg(long, value_name = "FILE")]
        keep: Option<PathBuf>,
    },
    /// A benchmark of the gateway's per-caller limits over real processes:
    /// Yibin's dispatch latency (p50, p99) alone, then while Luzhou floods
    /// the gateway at FACTOR times the limit.
    BenchFlood {
        /// Measured dispatches in each phase.
        #[arg(long, default_value_t = 1000)]
        samples: usize,
        /// The per-caller limit, requests a second.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// How many times its limit the flooding city sends.
        #[arg(long, default_value_t = 10.0)]
        factor: f64,
        /// WatchFlow streams the flooding city tries to open besides (the
        /// gateway holds its cap, limits.streams_per_caller, and refuses
        /// the rest).
        #[arg(long, default_value_t = 10_000)]
        watch_streams: usize,
        /// Write the JSON figures here.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// A benchmark of call-transfer signalling over real processes: the time
    /// from StartTransfer at the origin node to the ring at the target
    /// console (p50, p99), and the gateway's memory while it holds more and
    /// more live transfers. Needs the `gateway` and `city-node` binaries
    /// beside this one (`cargo build --release`).
    BenchTransfers {
        /// Measured transfers at each level.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Live transfers held at the gateway at each level, comma
        /// separated and rising.
        #[arg(long, value_delimiter = ',', default_value = "0,1000,5000,10000")]
        hold: Vec<usize>,
        /// Write the JSON figures here.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// A benchmark of the gateway's stores (issue #9): tickets/s through
    /// the gateway on SQLite, on PostgreSQL with one replica, and on
    /// PostgreSQL with two replicas sharing the load, over real processes.
    /// See docs/benchmarks.md.
    BenchReplicas {
        /// One short round instead of three full ones.
        #[arg(long)]
        quick: bool,
        /// The PostgreSQL server; a fresh schema is made on it.
        #[arg(
            long,
            env = "HOTLINE_BENCH_POSTGRES",
            default_value = "postgres://postgres@127.0.0.1:5432/test"
        )]
        postgres: String,
        /// Write the JSON figures here.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
}

/// The exit code of a command that either finishes or fails with an error.
fn finished<T>(result: anyhow::Result<T>) -> ExitCode {
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.command {
        Command::Run {
            scenario,
            spawn: _,
            targets,
            seed,
            speed,
            minutes,
            report,
            html,
            data_dir,
            drain,
        } => {
            let how = match targets {
                Some(t) => simulator::run::How::Targets(t),
                None => simulator::run::How::Spawn { data_dir },
            };
            let opts = simulator::run::RunOptions {
                scenario,
                how,
                seed,
                speed,
                minutes,
                report,
                html,
                drain: Duration::from_secs_f64(drain.max(0.0)),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            match runtime.block_on(simulator::run::run(opts)) {
                Ok(r) if r.invariant_violations.is_empty() => ExitCode::SUCCESS,
                Ok(r) => {
                    eprintln!(
                        "error: {} invariant violations",
                        r.invariant_violations.len()
                    );
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bench { quick, report, doc } => {
            let doc = doc.or_else(|| {
                let d = PathBuf::from("docs/benchmarks.md");
                d.exists().then_some(d)
            });
            let opts = simulator::peers::PeersOptions { quick, report, doc };
            finished(runtime.block_on(simulator::peers::run(opts)))
        }
        Command::BenchInstructions {
            tickets,
            repeat,
            workload,
            report,
            keep,
        } => {
            if tickets == 0 || repeat == 0 {
                eprintln!("error: --tickets and --repeat must be positive");
                return ExitCode::from(2);
            }
            finished(runtime.block_on(simulator::instructions::run(
                tickets,
                repeat,
                workload,
                report.as_deref(),
                keep.as_deref(),
            )))
        }
        Command::BenchSupervision {
            tickets,
            samples,
            data_dir,
            report,
        } => {
            if samples == 0 {
                eprintln!("error: --samples must be positive");
                return ExitCode::from(2);
            }
            finished(runtime.block_on(async move {
                simulator::supbench::run(simulator::supbench::Options {
                    tickets,
                    samples,
                    data_dir,
                    report,
                })
                .await
                .map(|_| ())
            }))
        }
        Command::BenchMerge {
            matters,
            seed,
            report,
        } => finished(runtime.block_on(async move {
            let dir = tempfile::tempdir()?;
            let e = simulator::matters::evaluate(dir.path(), seed, matters).await?;
            println!(
                "{} reports of {} matters; {} repeats of a dispatched matter",
                e.reports, e.matters, e.repeats
            );
            println!(
                "merged rightly {}, wrongly {}, missed {}: precision {:.3}, recall {:.3}; {:.0} µs per report at the gateway",
                e.true_merges, e.false_merges, e.missed, e.precision, e.recall, e.us_per_report
            );
            if let Some(path) = report {
                std::fs::write(&path, serde_json::to_vec_pretty(&e)?)?;
            }
            anyhow::Ok(())
        })),
        Command::BenchStats {
            tickets,
            data_dir,
            calls,
            report,
        } => {
            if calls == 0 {
                eprintln!("error: --calls must be positive");
                return ExitCode::from(2);
            }
            let opts = simulator::statsbench::StatsBenchOptions {
                tickets,
                data_dir,
                report,
                calls,
            };
            finished(runtime.block_on(simulator::statsbench::run(opts)))
        }
        Command::BenchFlood {
            samples,
            rate,
            factor,
            watch_streams,
            report,
        } => {
            if samples == 0 || !(rate > 0.0 && rate.is_finite()) || factor.is_nan() || factor < 1.0
            {
                eprintln!("error: --samples, --rate must be positive and --factor at least 1");
                return ExitCode::from(2);
            }
            let opts = simulator::flood::FloodOptions {
                samples,
                rate,
                factor,
                watch_streams,
                report,
            };
            finished(runtime.block_on(simulator::flood::run(opts)))
        }
        Command::BenchReplicas {
            quick,
            postgres,
            report,
        } => {
            let opts = simulator::replbench::ReplicaBenchOptions {
                quick,
                report,
                postgres,
            };
            finished(runtime.block_on(simulator::replbench::run(opts)))
        }
        Command::BenchTransfers {
            samples,
            hold,
            report,
        } => {
            if samples == 0 || hold.is_empty() || hold.windows(2).any(|w| w[0] > w[1]) {
                eprintln!("error: --samples must be positive and --hold a rising list");
                return ExitCode::from(2);
            }
            let opts = simulator::bench::TransferBenchOptions {
                samples,
                hold,
                report,
            };
            finished(runtime.block_on(simulator::bench::run(opts)))
        }
        Command::Demo {
            duration,
            report,
            data_dir,
            rate,
            seed,
            drain,
            transfer_rate,
        } => {
            if rate <= 0.0 || !rate.is_finite() {
                eprintln!("error: --rate must be a positive number");
                return ExitCode::from(2);
            }
            if transfer_rate < 0.0 || !transfer_rate.is_finite() {
                eprintln!("error: --transfer-rate must be zero or a positive number");
                return ExitCode::from(2);
            }
            let opts = DemoOptions {
                duration: duration.map(Duration::from_secs_f64),
                report,
                data_dir,
                rate,
                seed,
                drain: Duration::from_secs_f64(drain.max(0.0)),
                transfer_rate,
            };
            match runtime.block_on(demo::run(opts)) {
                Ok(r)
                    if r.tickets.lost == 0
                        && r.tickets.duplicated == 0
                        && r.transfers.stuck == 0
                        && r.gateway_stats_agree =>
                {
                    ExitCode::SUCCESS
                }
                Ok(r) => {
                    eprintln!(
                        "error: {} lost and {} duplicated tickets, {} stuck transfers; the gateway's statistics {} with the stores' recount",
                        r.tickets.lost,
                        r.tickets.duplicated,
                        r.transfers.stuck,
                        if r.gateway_stats_agree {
                            "agree"
                        } else {
                            "DISAGREE"
                        }
                    );
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
