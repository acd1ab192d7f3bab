//! `tinykd list-vars`: every variable of a model with its shape, as a table or JSON.

use std::fmt::Write as _;

use super::model_args::describe;
use super::{emit, ModelArgs, UsageError};
use crate::graph::{OpKind, Program};
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
    let prog = models::program(&cfg).map_err(|e| UsageError(e.to_string()))?;
    let aliases = dw_aliases(&prog);
    emit(&if a.json { to_json(&vars, &aliases) } else { to_table(&describe(&cfg), a.batch, &vars, &aliases) })
}

/// The Paddle-style names `--loss` also accepts: `depthwise_conv2d_<k>`, the raw output of the
/// `k`-th depthwise conv (see [`crate::graph::Program::find`]), as `(alias, tensor)`.
fn dw_aliases(prog: &Program) -> Vec<(String, String)> {
    let dws = prog.ops().iter().filter(|op| matches!(op.kind, OpKind::DwConv { .. }));
    dws.enumerate().map(|(k, op)| (format!("depthwise_conv2d_{k}"), prog.tensor(op.output).name.to_string())).collect()
}

fn dims_text(dims: &[usize]) -> String {
    dims.iter().map(usize::to_string).collect::<Vec<_>>().join("x")
}

fn to_table(title: &str, batch: u64, vars: &[VarInfo], aliases: &[(String, String)]) -> String {
    let w = vars.iter().map(|v| v.name.len()).max().unwrap_or(4).max(4);
    let mut s = String::new();
    let _ = writeln!(s, "# {title}, batch {batch}");
    let _ = writeln!(s, "{:<w$}  {:<10}  {:<6}  {:<18}  {:>12}", "name", "kind", "layout", "dims", "bytes");
    for v in vars {
        let kind = format!("{:?}", v.kind).to_lowercase();
        let _ = writeln!(s, "{:<w$}  {kind:<10}  {:<6}  {:<18}  {:>12}", v.name, v.layout, dims_text(&v.dims), v.bytes);
    }
    if !aliases.is_empty() {
        let _ = writeln!(s, "# aliases --loss accepts (Paddle's names of the depthwise convs' outputs):");
        for (alias, of) in aliases {
            let _ = writeln!(s, "# {alias:<w$} = {of}");
        }
    }
    s
}

/// A JSON array of the variables, then one `"kind": "alias"` item per alias, with `"of"` the
/// tensor it names and that tensor's dims, layout and bytes.
fn to_json(vars: &[VarInfo], aliases: &[(String, String)]) -> String {
    let item = |name: &str, v: &VarInfo, kind: String| serde_json::json!({ "name": name, "dims": v.dims, "layout": v.layout, "kind": kind, "bytes": v.bytes });
    let mut items: Vec<serde_json::Value> =
        vars.iter().map(|v| item(&v.name, v, format!("{:?}", v.kind).to_lowercase())).collect();
    for (alias, of) in aliases {
        if let Some(v) = vars.iter().find(|v| &v.name == of) {
            let mut a = item(alias, v, "alias".into());
            a["of"] = of.as_str().into();
            items.push(a);
        }
    }
    let mut s = serde_json::to_string_pretty(&items).expect("JSON values always serialise");
    s.push('\n');
    s
}
