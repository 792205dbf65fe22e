use clap::Parser;

/// mimalloc: Pingora allocates and frees a body buffer per read; glibc's allocator spent a
/// fifth of the gateway's CPU on that in the load benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tollgate::logging::init();
    let cli = tollgate::cli::Cli::parse();
    std::process::exit(tollgate::cli::run(cli));
}
