//! A runtime binary with a user-written operator (the equivalent of a Flink
//! jar): registers `running-total`, a keyed Rust operator with ValueState,
//! under a name that job specs refer to, then runs the job file given on the
//! command line (or a built-in example).
//!
//! cargo run -p runnel-runtime --example custom_operator [-- JOB.yaml]

use runnel_runtime::declarative::{self, ConnectorRegistry, OperatorContext, OperatorInput, Value};
use runnel_runtime::state::keyed::{ValueState, ValueStateDescriptor};
use runnel_runtime::{
    CheckpointListener, DataStream, FnResult, InitContext, KeyedContext, KeyedProcessFunction,
    UserError,
};

/// Adds `field` of every record to a per-key running total and emits the
/// record with the total in `into`.
#[derive(Clone)]
pub struct RunningTotal {
    field: String,
    into: String,
    total: Option<ValueState<i64>>,
}

impl CheckpointListener for RunningTotal {}

impl KeyedProcessFunction<Value, Value, Value> for RunningTotal {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_, Value>) -> FnResult {
        self.total = Some(ctx.value_state(&ValueStateDescriptor::new("total"))?);
        Ok(())
    }

    fn process_element(&mut self, v: Value, ctx: &mut KeyedContext<'_, Value, Value>) -> FnResult {
        let st = self
            .total
            .as_ref()
            .ok_or_else(|| UserError::msg("state not initialized"))?;
        let add = match v.get(&self.field) {
            Some(Value::Int(i)) => *i,
            _ => 0,
        };
        let total = st.value(ctx)?.unwrap_or(0) + add;
        st.update(ctx, total)?;
        let mut out = v;
        if let Value::Map(m) = &mut out {
            m.insert(self.into.clone(), Value::Int(total));
        }
        ctx.collect(out);
        Ok(())
    }
}

/// The factory: reads the step's `config`, refuses bad configuration with a
/// message (reported with the step's path), and wires the operator.
pub fn running_total(
    input: OperatorInput,
    ctx: &OperatorContext<'_>,
) -> Result<DataStream<Value>, String> {
    let field = ctx
        .config
        .get("field")
        .and_then(|f| f.as_str())
        .ok_or("config.field (string) is required")?
        .to_string();
    let into = ctx
        .config
        .get("into")
        .and_then(|f| f.as_str())
        .unwrap_or("total")
        .to_string();
    match input {
        OperatorInput::Keyed(k) => Ok(k.process(
            ctx.name,
            RunningTotal {
                field,
                into,
                total: None,
            },
        )),
        OperatorInput::Stream(_) => {
            Err("running-total is keyed: put a keyBy step before it".into())
        }
    }
}

/// The registry this binary runs jobs with.
pub fn registry() -> ConnectorRegistry {
    ConnectorRegistry::new().with_operator("running-total", running_total)
}

const EXAMPLE: &str = r#"
version: 1
name: running-totals
sources:
  - name: sales
    elements:
      - { shop: "a", amount: 5 }
      - { shop: "b", amount: 7 }
      - { shop: "a", amount: 10 }
steps:
  - keyBy: "shop"
  - name: totals
    operator: { name: running-total, config: { field: amount, into: total } }
sinks:
  - name: out
    stdout: {}
"#;

fn main() -> anyhow::Result<()> {
    let text = match std::env::args().nth(1) {
        Some(path) => std::fs::read_to_string(path)?,
        None => EXAMPLE.to_string(),
    };
    let job = declarative::load_and_build(&text, &registry())
        .map_err(|e| anyhow::anyhow!("invalid job:\n{}", runnel_spec::format_errors(&e)))?;
    job.execute()?;
    Ok(())
}
