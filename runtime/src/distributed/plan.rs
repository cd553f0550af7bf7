//! The tasks of a job as the coordinator needs them: index, parallelism, name
//! and whether they are sources. Computed with the same chaining rules as the
//! executor's deploy step (a worker checks the names it actually deployed
//! against this plan and refuses the attempt if they differ).

use crate::config::JobConfig;
use crate::graph::{EdgeKind, JobGraph, NodeKind};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedTask {
    pub name: String,
    pub parallelism: u32,
    pub is_source: bool,
}

impl PlannedTask {
    /// The name of one subtask, as the executor names its thread.
    pub fn subtask_name(&self, s: u32) -> String {
        format!("{} ({}/{})", self.name, s + 1, self.parallelism)
    }
}

pub fn plan(graph: &JobGraph, cfg: &JobConfig) -> Vec<PlannedTask> {
    let nodes = &graph.nodes;
    let par: Vec<u32> = nodes
        .iter()
        .map(|n| n.parallelism.unwrap_or(cfg.parallelism))
        .collect();
    let chained: Vec<bool> = nodes
        .iter()
        .map(|n| {
            n.inputs.len() == 1
                && n.inputs[0].kind == EdgeKind::Forward
                && par[n.inputs[0].from] == par[n.id]
                && !matches!(n.kind, NodeKind::Source(_))
        })
        .collect();
    let mut tasks = Vec::new();
    let mut task_of = vec![0usize; nodes.len()];
    let mut members: Vec<Vec<usize>> = Vec::new();
    for n in nodes {
        if chained[n.id] {
            let t = task_of[n.inputs[0].from];
            task_of[n.id] = t;
            members[t].push(n.id);
        } else {
            task_of[n.id] = members.len();
            members.push(vec![n.id]);
        }
    }
    for m in members {
        let head = &nodes[m[0]];
        tasks.push(PlannedTask {
            name: m
                .iter()
                .map(|&i| nodes[i].uid.as_str())
                .collect::<Vec<_>>()
                .join(" -> "),
            parallelism: par[head.id],
            is_source: matches!(head.kind, NodeKind::Source(_)),
        });
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeds::{CountWindowAverage, tuple};
    use crate::sinks::PrintSink;
    use crate::sources::FromElements;
    use crate::{JobConfig, StreamEnv};

    #[test]
    fn plans_chains_like_the_executor() {
        let mut cfg = JobConfig::new("p");
        cfg.parallelism = 3;
        let env = StreamEnv::new(cfg);
        env.add_source("elements", FromElements::new(vec![(1u64, 3u64)]))
            .set_parallelism(1)
            .key_by(|t: &(u64, u64)| t.0)
            .process("cwa", CountWindowAverage::default())
            .map(|t: (u64, u64)| tuple(&t))
            .sink("print", PrintSink);
        let (g, cfg) = env.build().unwrap();
        let p = plan(&g, &cfg);
        assert_eq!(
            p,
            vec![
                PlannedTask {
                    name: "elements".into(),
                    parallelism: 1,
                    is_source: true
                },
                PlannedTask {
                    name: "cwa -> map#2 -> print".into(),
                    parallelism: 3,
                    is_source: false
                },
            ]
        );
        assert_eq!(p[1].subtask_name(0), "cwa -> map#2 -> print (1/3)");
    }
}
