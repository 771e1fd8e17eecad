//! A physical optimizer rule that lets the query time limit stop joins and unnests.
//!
//! The time limit is a tokio timeout around the query's stream; it fires only when the
//! query yields to the runtime. DataFusion's own `EnsureCooperative` rule makes the scans
//! spend tokio's cooperative budget, one unit per batch they read — but a join can make
//! billions of rows out of one batch read: `flows a, flows b, flows c` ran on for over 18
//! minutes without yielding, past a limit of half a second. [`YieldingJoins`] wraps every
//! join and unnest in DataFusion's `CooperativeExec`, so each batch they emit spends the
//! budget too, and a query that runs out of time is stopped within a few batches.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode as _};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::SchedulingType;

/// See the [module documentation](self).
#[derive(Debug, Default)]
pub struct YieldingJoins;

impl YieldingJoins {
    /// Operators that can emit many batches for each batch they read: every join
    /// (`HashJoinExec`, `NestedLoopJoinExec`, `CrossJoinExec`, `SortMergeJoinExec`, …,
    /// by name so that joins DataFusion adds later are covered) and `UnnestExec`.
    fn multiplies_rows(plan: &dyn ExecutionPlan) -> bool {
        plan.name().ends_with("JoinExec") || plan.name() == "UnnestExec"
    }
}

impl PhysicalOptimizerRule for YieldingJoins {
    fn name(&self) -> &str {
        "YieldingJoins"
    }

    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|plan| {
            let cooperative = plan.properties().scheduling_type == SchedulingType::Cooperative;
            if Self::multiplies_rows(plan.as_ref()) && !cooperative {
                Ok(Transformed::yes(
                    Arc::new(CooperativeExec::new(plan)) as Arc<dyn ExecutionPlan>
                ))
            } else {
                Ok(Transformed::no(plan))
            }
        })
        .map(|t| t.data)
    }

    fn schema_check(&self) -> bool {
        // The wrapper passes its input's batches through unchanged.
        true
    }
}
