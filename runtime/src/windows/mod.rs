//! Windows and aggregations on keyed streams: tumbling, sliding, session and
//! count windows, in event or processing time, with allowed lateness and a side
//! output for late records; plus de-duplication by key within a TTL.
//!
//! ```no_run
//! use runnel_runtime::windows::{self, CountAggregator, WindowAssigner, WindowOptions};
//! use runnel_runtime::{JobConfig, StreamEnv, TimeDomain};
//! use runnel_runtime::sources::GeneratorSource;
//!
//! let env = StreamEnv::new(JobConfig::new("counts"));
//! let keyed = env
//!     .add_source("numbers", GeneratorSource::new(|i: u64| i).count(1000))
//!     .key_by(|i: &u64| i % 10);
//! let out = windows::window(
//!     keyed,
//!     "count-per-key",
//!     WindowOptions::new(WindowAssigner::Count { size: 100 }, TimeDomain::ProcessingTime),
//!     CountAggregator,
//! );
//! out.results.sink("print", runnel_runtime::sinks::DiscardSink);
//! drop(out.late);
//! env.execute().unwrap();
//! ```

pub mod aggregate;
pub mod assigner;
pub mod dedup;
pub mod operator;

pub use aggregate::{CountAggregator, WindowAggregator};
pub use assigner::{TimeWindow, WindowAssigner};
pub use dedup::Dedup;
pub use operator::{WindowOperator, WindowOptions, WindowOutput};

use crate::functions::Data;
use crate::graph::{DataStream, KeyedStream};
use crate::state::keyed::Key;

/// The two outputs of a window: results, and records too late for any window.
pub struct Windowed<Out, In> {
    pub results: DataStream<Out>,
    /// Late records (event time, beyond the allowed lateness). Drop this
    /// handle to discard them.
    pub late: DataStream<In>,
}

/// Applies a window with an aggregation to a keyed stream. `name` identifies
/// the window's state across job versions.
pub fn window<K, In, A>(
    keyed: KeyedStream<K, In>,
    name: &str,
    opts: WindowOptions,
    agg: A,
) -> Windowed<A::Out, In>
where
    K: Key,
    In: Data,
    A: WindowAggregator<K, In>,
{
    let par = opts.parallelism;
    let out = keyed.process(name, WindowOperator::new(opts, agg));
    let out = match par {
        Some(n) => out.set_parallelism(n),
        None => out,
    };
    let late = out.fork().flat_map(|o: WindowOutput<A::Out, In>, c| {
        if let WindowOutput::Late(v) = o {
            c.collect(v)
        }
    });
    let late = match par {
        Some(n) => late.set_parallelism(n),
        None => late,
    };
    let results = out.flat_map(|o: WindowOutput<A::Out, In>, c| {
        if let WindowOutput::Result(v) = o {
            c.collect(v)
        }
    });
    let results = match par {
        Some(n) => results.set_parallelism(n),
        None => results,
    };
    Windowed { results, late }
}
