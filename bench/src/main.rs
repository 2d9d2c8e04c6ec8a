//! `quiver-bench`: see `quiver-bench --help` and bench/README.md.

fn main() -> anyhow::Result<()> {
    quiver_bench::cli::main()
}
