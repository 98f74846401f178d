use clap::Parser;

fn main() -> anyhow::Result<()> {
    ferricd::limit_malloc_arenas();
    let args = ferricd::Args::parse();
    let config = ferricd::Config::load(&args)?;
    ferricd::init_logging(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(ferricd::run(config))
}
