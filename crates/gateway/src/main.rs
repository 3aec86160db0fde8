//! `chatd`: run a node (`chatd serve`, the default) and the operator's subcommands; the command
//! line itself is `gateway::cli`.

/// mimalloc instead of glibc's malloc: frees from another thread (a flushed memtable, a
/// delivered frame) take no arena lock, and a DM costs less CPU (docs/BENCHMARKS.md,
/// "mimalloc").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    gateway::cli::main()
}
