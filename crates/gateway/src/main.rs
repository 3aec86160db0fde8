//! `chatd`: run a node (`chatd serve`, the default) and the operator's subcommands; the command
//! line itself is `gateway::cli`.

fn main() -> anyhow::Result<()> {
    gateway::cli::main()
}
