//! `herald-gateway`: parses configuration, starts logging, binds, and runs the gateway.

use clap::Parser as _;

/// mimalloc, not the system allocator: a third less CPU per request, and no slowdown beside a
/// million subscriptions held in memory (README, Benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = herald_core::runtime::init_logging("herald-gateway");
    let config = herald_gateway::Config::parse();
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("HERALD_LISTEN: cannot bind {}: {e}", config.listen))?;
    herald_gateway::run(config, listener, herald_core::runtime::shutdown_signal()).await
}
