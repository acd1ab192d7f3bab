//! `tinykd list-vars`: every variable of a model with its shape, as a table or JSON.

use std::fmt::Write as _;

use super::model_args::describe;
use super::{emit, ModelArgs, UsageError};
use crate::models::{self, VarInfo};

/// `tinykd list-vars`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch size of the activation shapes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000), value_name = "B")]
    pub batch: u64,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `list-vars`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg = a.model.to_config()?;
    let vars = models::list_vars(&cfg, a.batch as usize).map_err(|e| UsageError(e.to_string()))?;
    emit(&if a.json { to_json(&vars) } else { to_table(&describe(&cfg), a.batch, &vars) })
}

fn dims_text(dims: &[usize]) -> String {
    dims.iter().map(usize::to_string).collect::<Vec<_>>().join("x")
}

fn to_table(title: &str, batch: u64, vars: &[VarInfo]) -> String {
    let w = vars.iter().map(|v| v.name.len()).max().unwrap_or(4).max(4);
    let mut s = String::new();
    let _ = writeln!(s, "# {title}, batch {batch}");
    let _ = writeln!(s, "{:<w$}  {:<10}  {:<6}  {:<18}  {:>12}", "name", "kind", "layout", "dims", "bytes");
    for v in vars {
        let kind = format!("{:?}", v.kind).to_lowercase();
        let _ = writeln!(s, "{:<w$}  {kind:<10}  {:<6}  {:<18}  {:>12}", v.name, v.layout, dims_text(&v.dims), v.bytes);
    }
    s
}

fn to_json(vars: &[VarInfo]) -> String {
    let items: Vec<serde_json::Value> = vars
        .iter()
        .map(|v| {
            serde_json::json!({
                "name": v.name,
                "dims": v.dims,
                "layout": v.layout,
                "kind": format!("{:?}", v.kind).to_lowercase(),
                "bytes": v.bytes,
            })
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&items).expect("JSON values always serialise");
    s.push('\n');
    s
}
