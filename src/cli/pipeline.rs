//! `stagehand pipeline`: the pipeline file, checked locally.

use std::path::PathBuf;

use clap::Subcommand;
use stagehand::pipeline::Pipeline;

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Check a pipeline file and print its environments in promotion order.
    Validate {
        /// The pipeline file.
        #[arg(long, env = "STAGEHAND_PIPELINE", default_value = "pipeline.yaml")]
        pipeline: PathBuf,
    },
}

pub fn run(command: PipelineCommand) -> anyhow::Result<()> {
    let PipelineCommand::Validate { pipeline } = command;
    let pipeline = Pipeline::load(&pipeline)?;
    println!("pipeline {}", pipeline.name);
    for env in &pipeline.environments {
        match &env.promotes_from {
            Some(from) => println!("  {} (promoted from {from})", env.name),
            None => println!("  {}", env.name),
        }
    }
    Ok(())
}
