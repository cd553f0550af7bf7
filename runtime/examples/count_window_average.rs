//! Seed 003: CountWindowAverage over a keyed stream. Prints (2,8), (2,11), (2,3).

use runnel_runtime::seeds::{CountWindowAverage, tuple};
use runnel_runtime::sources::FromElements;
use runnel_runtime::{JobConfig, SinkContext, SinkFunction, StreamEnv};

#[derive(Clone)]
struct Print;
impl runnel_runtime::CheckpointListener for Print {}
impl SinkFunction<(u64, u64)> for Print {
    fn invoke(&mut self, v: (u64, u64), _: &SinkContext) -> runnel_runtime::FnResult {
        println!("{}", tuple(&v));
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let env = StreamEnv::new(JobConfig::new("count-window-average"));
    env.add_source(
        "elements",
        FromElements::new(vec![(1u64, 3u64), (1, 5), (1, 7), (1, 4), (1, 2), (1, 1)]),
    )
    .key_by(|t: &(u64, u64)| t.0)
    .process("count-window-average", CountWindowAverage::default())
    .sink("print", Print);
    env.execute()?;
    Ok(())
}
