use clap::Parser;

/// mimalloc: Pingora allocates and frees a body buffer per read; glibc's allocator spent a
/// fifth of the gateway's CPU on that in the load benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = tollgate::cli::Cli::parse();
    std::process::exit(tollgate::cli::run(cli));
}
