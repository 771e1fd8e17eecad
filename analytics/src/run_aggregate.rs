//! A partial aggregate that finds each group once per run of equal keys.
//!
//! Ingest sorts the rows of every file by `src_ip, dst_ip, dst_port`
//! (`bulkhead_ingest::writer::SORT_COLUMNS`), so a scan of `flows` yields long runs of
//! equal keys: `GROUP BY src_ip` over the benchmark lake sees a new key every 14 rows on
//! average. DataFusion's hash aggregate hashes and probes its group table for every row
//! all the same; [`RunGroupedPartialAggregate`] replaces its partial (per-partition) stage
//! with [`RunGroupedAggregateExec`], which marks where the key changes (comparing each
//! row's 16-byte string view, or value, with the previous row's), looks up only the first
//! row of each run in the same group table DataFusion uses, and gives every row of a run
//! that run's group. The aggregate functions are DataFusion's own group accumulators:
//! `count` and integer `sum` take one partial state per run (`merge_batch`), the others
//! each row as the hash aggregate feeds them; the output is the partial state the final
//! stage expects, so only the cost of finding groups changes, not an answer.
//!
//! Where runs are short (input in no useful order), a batch is looked up row by row as
//! before, and run detection pauses for a few batches so that it costs next to nothing.
//! The partial stage may emit a group more than once (the final stage merges states), so
//! when its memory reservation cannot grow, or it holds [`FLUSH_GROUPS`] groups, it emits
//! what it has and starts again — memory stays bounded as with DataFusion's own. Like
//! DataFusion's, it stops aggregating when its first rows (by default 100,000) made nearly
//! as many groups, and passes rows on as partial states for the final stage.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::GenericByteViewArray;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray as _, Int64Array, Int64Builder, RecordBatch, UInt32Array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::datatypes::{ByteViewType, DataType, Int64Type, Schema};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode as _, TreeNodeRecursion};
use datafusion::common::{Result, internal_err};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{ColumnarValue, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, PhysicalExpr, PlanProperties,
};
use futures::StreamExt as _;

/// A partial stage holding this many groups emits them and starts again.
pub const FLUSH_GROUPS: usize = 1 << 20;

/// A batch is looked up by runs when it has at most one run per this many rows.
const ROWS_PER_RUN_WORTH_IT: usize = 4;

/// Batches looked up row by row, without run detection, after a batch whose runs were
/// too short.
const PAUSE_BATCHES: u32 = 16;

/// Replaces each eligible partial `AggregateExec` with a [`RunGroupedAggregateExec`].
/// Eligible: one grouping set with at least one key, no row limit, input in no declared
/// order, and aggregates with group accumulators and no `DISTINCT`, `FILTER` or
/// `ORDER BY` of their own.
#[derive(Debug)]
pub struct RunGroupedPartialAggregate {
    /// A partial stage holding this many groups emits them and starts again.
    pub flush_groups: usize,
}

impl Default for RunGroupedPartialAggregate {
    fn default() -> Self {
        Self {
            flush_groups: FLUSH_GROUPS,
        }
    }
}

impl PhysicalOptimizerRule for RunGroupedPartialAggregate {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            match RunGroupedAggregateExec::try_from_partial(aggregate, self.flush_groups)? {
                Some(exec) => Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "bulkhead_run_grouped_partial_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The partial stage of a grouped aggregate, finding groups once per run of equal keys
/// (see the [module documentation](self)).
#[derive(Debug)]
pub struct RunGroupedAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    group_by: Vec<(Arc<dyn PhysicalExpr>, String)>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// The keys' schema, for the group table.
    group_schema: SchemaRef,
    /// The same as the replaced `AggregateExec`'s: keys, then each aggregate's state.
    properties: Arc<PlanProperties>,
    flush_groups: usize,
    metrics: ExecutionPlanMetricsSet,
}

impl RunGroupedAggregateExec {
    /// The replacement of `aggregate`, or `None` when it is not an eligible partial stage.
    pub fn try_from_partial(
        aggregate: &AggregateExec,
        flush_groups: usize,
    ) -> Result<Option<Self>> {
        let group_by = aggregate.group_expr();
        let eligible = *aggregate.mode() == AggregateMode::Partial
            && group_by.is_single()
            && !group_by.expr().is_empty()
            && aggregate.limit_options().is_none()
            && aggregate.dynamic_expressions_produced().is_empty()
            && *aggregate.input_order_mode() == InputOrderMode::Linear
            && aggregate.filter_expr().iter().all(Option::is_none)
            && aggregate.aggr_expr().iter().all(|a| {
                !a.is_distinct() && a.order_bys().is_empty() && a.groups_accumulator_supported()
            });
        if !eligible {
            return Ok(None);
        }
        let input = Arc::clone(aggregate.input());
        Ok(Some(Self {
            group_schema: group_by.group_schema(&input.schema())?,
            group_by: group_by.expr().to_vec(),
            aggregates: aggregate.aggr_expr().to_vec(),
            properties: Arc::clone(aggregate.properties()),
            input,
            flush_groups,
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

impl DisplayAs for RunGroupedAggregateExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<&str> = self
            .group_by
            .iter()
            .map(|(_, name)| name.as_str())
            .collect();
        let aggregates: Vec<&str> = self.aggregates.iter().map(|a| a.name()).collect();
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => write!(
                f,
                "RunGroupedAggregateExec: mode=Partial, gby=[{}], aggr=[{}]",
                keys.join(", "),
                aggregates.join(", ")
            ),
            DisplayFormatType::TreeRender => write!(f, "gby={}", keys.join(", ")),
        }
    }
}

impl ExecutionPlan for RunGroupedAggregateExec {
    fn name(&self) -> &str {
        "RunGroupedAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let keys = self.group_by.iter().map(|(e, _)| e.clone());
        let arguments = self.aggregates.iter().flat_map(|a| a.expressions());
        let mut recursion = TreeNodeRecursion::Continue;
        for expr in keys.chain(arguments) {
            recursion = f(&expr)?;
            if recursion == TreeNodeRecursion::Stop {
                break;
            }
        }
        Ok(recursion)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(input), true) = (children.pop(), children.is_empty()) else {
            return internal_err!("RunGroupedAggregateExec takes exactly one input");
        };
        // A partial aggregate is partitioned as its input is.
        let properties = (*self.properties)
            .clone()
            .with_partitioning(input.properties().output_partitioning().clone());
        Ok(Arc::new(Self {
            group_by: self.group_by.clone(),
            aggregates: self.aggregates.clone(),
            group_schema: self.group_schema.clone(),
            properties: Arc::new(properties),
            input,
            flush_groups: self.flush_groups,
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input_schema = self.input.schema();
        let options = &context.session_config().options().execution;
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let reservation = MemoryConsumer::new(format!("RunGroupedAggregateExec[{partition}]"))
            .with_can_spill(true)
            .register(context.memory_pool());
        let state = PartialState {
            group_by: self.group_by.clone(),
            aggregates: self
                .aggregates
                .iter()
                .map(|a| {
                    Ok(FedAggregate {
                        arguments: a.expressions(),
                        feed: RunFeed::of(a, &input_schema)?,
                        accumulator: a.create_groups_accumulator()?,
                        function: Arc::clone(a),
                    })
                })
                .collect::<Result<_>>()?,
            groups: new_group_values(self.group_schema.clone(), &GroupOrdering::None)?,
            group_schema: self.group_schema.clone(),
            schema: self.schema(),
            reservation,
            metrics: BaselineMetrics::new(&self.metrics, partition),
            row_groups: Vec::new(),
            run_ends: Vec::new(),
            run_groups: Vec::new(),
            paused_batches: 0,
            flush_groups: self.flush_groups,
            probe_rows: 0,
            skipping: false,
            skip_probe_rows: options.skip_partial_aggregation_probe_rows_threshold,
            skip_probe_ratio: options.skip_partial_aggregation_probe_ratio_threshold,
            input,
        };
        let schema = self.schema();
        let batches = futures::stream::try_unfold(Some(state), |state| async move {
            let Some(mut state) = state else {
                return Ok(None);
            };
            while let Some(batch) = state.input.next().await.transpose()? {
                if state.skipping
                    && let Some(out) = state.pass_through(&batch)?
                {
                    return Ok(Some((out, Some(state))));
                }
                state.update(&batch)?;
                if state.probe(batch.num_rows()) || state.must_flush() {
                    let out = state.emit()?;
                    return Ok(Some((out, Some(state))));
                }
            }
            if state.groups.is_empty() {
                return Ok(None);
            }
            let out = state.emit()?;
            Ok(Some((out, None)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One partition's partial aggregate while it consumes its input.
struct PartialState {
    input: SendableRecordBatchStream,
    group_by: Vec<(Arc<dyn PhysicalExpr>, String)>,
    aggregates: Vec<FedAggregate>,
    groups: Box<dyn GroupValues>,
    group_schema: SchemaRef,
    schema: SchemaRef,
    reservation: MemoryReservation,
    metrics: BaselineMetrics,
    /// The group of each row of the current batch (filled only when needed).
    row_groups: Vec<usize>,
    /// The end (exclusive) of each run of the current batch; empty when it was looked up
    /// row by row.
    run_ends: Vec<usize>,
    /// The group of each run of the current batch.
    run_groups: Vec<usize>,
    /// Batches still to look up row by row before trying runs again.
    paused_batches: u32,
    flush_groups: usize,
    /// Rows aggregated before deciding whether aggregating here pays (`usize::MAX` once
    /// decided).
    probe_rows: usize,
    /// Whether rows pass through as partial states, as DataFusion's partial aggregate
    /// does when nearly every row is a new group: the final stage aggregates them.
    skipping: bool,
    skip_probe_rows: usize,
    skip_probe_ratio: f64,
}

/// One aggregate function of the partial stage.
struct FedAggregate {
    function: Arc<AggregateFunctionExpr>,
    arguments: Vec<Arc<dyn PhysicalExpr>>,
    feed: RunFeed,
    accumulator: Box<dyn GroupsAccumulator>,
}

/// How an aggregate takes a batch that was grouped by runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum RunFeed {
    /// Row by row (`update_batch` with each row's group): any aggregate.
    Rows,
    /// `count(x)`: each run's count of non-null `x` is merged as a partial state.
    Count,
    /// `sum(x)` of integers, summed (wrapping, as DataFusion's `sum` does) into `Int64`
    /// per run and merged as a partial state: the same answer, one merge per run.
    SumInt64,
}

impl RunFeed {
    fn of(aggregate: &AggregateFunctionExpr, input: &Schema) -> Result<Self> {
        let arguments = aggregate.expressions();
        let states = aggregate.state_fields()?;
        let [state] = states.as_slice() else {
            return Ok(Self::Rows);
        };
        if arguments.len() != 1 || *state.data_type() != DataType::Int64 {
            return Ok(Self::Rows);
        }
        let signed_integer = matches!(
            arguments[0].data_type(input)?,
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64
        );
        Ok(match aggregate.fun().name() {
            "count" => Self::Count,
            "sum" if signed_integer => Self::SumInt64,
            _ => Self::Rows,
        })
    }
}

impl PartialState {
    fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let elapsed = self.metrics.elapsed_compute().clone();
        let _timer = elapsed.timer();
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let keys = evaluate(self.group_by.iter().map(|(expr, _)| expr), batch)?;
        self.find_groups(&keys, rows)?;
        let by_runs = !self.run_ends.is_empty();
        if by_runs && self.aggregates.iter().any(|a| a.feed == RunFeed::Rows) {
            self.row_groups.clear();
            let mut start = 0;
            for (&end, &group) in self.run_ends.iter().zip(&self.run_groups) {
                self.row_groups
                    .extend(std::iter::repeat_n(group, end - start));
                start = end;
            }
        }
        let total_groups = self.groups.len();
        for aggregate in &mut self.aggregates {
            let accumulator = &mut aggregate.accumulator;
            if by_runs && aggregate.feed == RunFeed::Count {
                // `count(*)` counts a constant: no column to build, each run counts whole.
                let counts = match aggregate.arguments[0].evaluate(batch)? {
                    ColumnarValue::Scalar(value) => {
                        run_counts(None, value.is_null(), &self.run_ends)
                    }
                    ColumnarValue::Array(values) => {
                        run_counts(values.logical_nulls().as_ref(), false, &self.run_ends)
                    }
                };
                accumulator.merge_batch(&[counts], &self.run_groups, total_groups)?;
                continue;
            }
            let values = evaluate(&aggregate.arguments, batch)?;
            match (by_runs, aggregate.feed) {
                (true, RunFeed::SumInt64) => {
                    let sums = run_sums(&values[0], &self.run_ends)?;
                    accumulator.merge_batch(&[sums], &self.run_groups, total_groups)?
                }
                _ => accumulator.update_batch(&values, &self.row_groups, None, total_groups)?,
            }
        }
        let held = self.groups_bytes() + self.row_groups.capacity() * size_of::<usize>();
        if self.reservation.try_resize(held).is_err() {
            // Emitting frees the groups; `must_flush` sees the reservation short of them.
            tracing::debug!(
                held,
                "partial aggregate at its memory limit: emitting early"
            );
        }
        Ok(())
    }

    /// Finds the groups of the batch: by runs (`run_ends` and `run_groups`, looking up
    /// only each run's first row) when it has long runs of equal keys, else row by row
    /// (`row_groups`, `run_ends` left empty).
    fn find_groups(&mut self, keys: &[ArrayRef], rows: usize) -> Result<()> {
        self.run_ends.clear();
        self.row_groups.clear();
        if self.paused_batches > 0 {
            self.paused_batches -= 1;
            return self.groups.intern(keys, &mut self.row_groups);
        }
        let firsts = run_starts(keys, rows)?;
        if firsts.len() * ROWS_PER_RUN_WORTH_IT > rows {
            self.paused_batches = PAUSE_BATCHES;
            return self.groups.intern(keys, &mut self.row_groups);
        }
        let first_keys = keys
            .iter()
            .map(|key| take(key.as_ref(), &firsts, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.run_groups.clear();
        self.groups.intern(&first_keys, &mut self.run_groups)?;
        let ends = firsts.values().iter().skip(1).map(|&i| i as usize);
        self.run_ends.extend(ends.chain([rows]));
        Ok(())
    }

    /// After the first `skip_probe_rows` rows: when they made nearly as many groups
    /// (DataFusion's `skip_partial_aggregation_probe_*` settings), the following rows pass
    /// through. True when the decision is to skip: what was aggregated is emitted first.
    fn probe(&mut self, rows: usize) -> bool {
        if self.probe_rows == usize::MAX {
            return false;
        }
        self.probe_rows += rows;
        if self.probe_rows < self.skip_probe_rows {
            return false;
        }
        let ratio = self.groups.len() as f64 / self.probe_rows as f64;
        self.probe_rows = usize::MAX;
        self.skipping = ratio >= self.skip_probe_ratio;
        self.skipping
    }

    /// The batch's rows as partial states, one per row; `None` (and no more skipping)
    /// when an aggregate cannot convert rows to states.
    fn pass_through(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        let elapsed = self.metrics.elapsed_compute().clone();
        let _timer = elapsed.timer();
        let mut columns = evaluate(self.group_by.iter().map(|(expr, _)| expr), batch)?;
        for aggregate in &self.aggregates {
            let values = evaluate(&aggregate.arguments, batch)?;
            match aggregate.accumulator.convert_to_state(&values, None) {
                Ok(states) => columns.extend(states),
                Err(e) => {
                    tracing::debug!(error = %e, "aggregating here after all");
                    self.skipping = false;
                    return Ok(None);
                }
            }
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.metrics.record_output(batch.num_rows());
        Ok(Some(batch))
    }

    /// Bytes held by the group table and the accumulators.
    fn groups_bytes(&self) -> usize {
        let accumulators = self.aggregates.iter().map(|a| a.accumulator.size());
        self.groups.size() + accumulators.sum::<usize>()
    }

    fn must_flush(&self) -> bool {
        self.groups.len() >= self.flush_groups || self.reservation.size() < self.groups_bytes()
    }

    /// Every group's keys and partial states, as one batch; the groups start again empty.
    fn emit(&mut self) -> Result<RecordBatch> {
        let elapsed = self.metrics.elapsed_compute().clone();
        let _timer = elapsed.timer();
        // Fresh tables after emitting: DataFusion's multi-column group table keeps its
        // hash map across `emit(All)` (its own aggregate replaces the table instead).
        let mut columns = self.groups.emit(EmitTo::All)?;
        self.groups = new_group_values(self.group_schema.clone(), &GroupOrdering::None)?;
        for aggregate in &mut self.aggregates {
            columns.extend(aggregate.accumulator.state(EmitTo::All)?);
            aggregate.accumulator = aggregate.function.create_groups_accumulator()?;
        }
        self.reservation.free();
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.metrics.record_output(batch.num_rows());
        Ok(batch)
    }
}

/// Each expression's value over `batch`, as a column.
fn evaluate<'a>(
    exprs: impl IntoIterator<Item = &'a Arc<dyn PhysicalExpr>>,
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>> {
    let rows = batch.num_rows();
    exprs
        .into_iter()
        .map(|expr| expr.evaluate(batch)?.into_array(rows))
        .collect()
}

/// Rows `start..end` that are not null.
fn valid_rows(nulls: Option<&NullBuffer>, start: usize, end: usize) -> usize {
    nulls.map_or(end - start, |nulls| {
        let bits = nulls.buffer();
        bits.count_set_bits_offset(nulls.offset() + start, end - start)
    })
}

/// Each run's count of non-null values (none if `all_null`), as `count`'s partial state.
fn run_counts(nulls: Option<&NullBuffer>, all_null: bool, run_ends: &[usize]) -> ArrayRef {
    let mut start = 0;
    let counts = run_ends.iter().map(|&end| {
        let valid = if all_null {
            0
        } else {
            valid_rows(nulls, start, end)
        };
        start = end;
        valid as i64
    });
    Arc::new(Int64Array::from_iter_values(counts))
}

/// Each run's wrapping sum of its non-null values as `Int64` (`sum`'s partial state for
/// integers), null for a run with none.
fn run_sums(values: &ArrayRef, run_ends: &[usize]) -> Result<ArrayRef> {
    let values = datafusion::arrow::compute::cast(values, &DataType::Int64)?;
    let values = values.as_primitive::<Int64Type>();
    let numbers = values.values();
    let mut sums = Int64Builder::with_capacity(run_ends.len());
    let mut start = 0;
    let nulls = values.nulls();
    for &end in run_ends {
        match nulls {
            _ if valid_rows(nulls, start, end) == 0 => sums.append_null(),
            None => {
                let run = &numbers[start..end];
                sums.append_value(run.iter().fold(0, |sum, &n| sum.wrapping_add(n)))
            }
            Some(nulls) => {
                let valid = (start..end).filter(|&row| nulls.is_valid(row));
                sums.append_value(valid.fold(0, |sum, row| sum.wrapping_add(numbers[row])))
            }
        }
        start = end;
    }
    Ok(Arc::new(sums.finish()))
}

/// The first row of each run of equal keys (row 0 first). Equal keys in two adjacent rows
/// may be seen as different (a string stored twice), which only splits a run: both halves
/// find the same group.
fn run_starts(keys: &[ArrayRef], rows: usize) -> Result<UInt32Array> {
    let mut differs = vec![false; rows];
    for key in keys {
        mark_changes(key.as_ref(), &mut differs)?;
    }
    differs[0] = true;
    Ok(UInt32Array::from_iter_values(
        (0..rows as u32).filter(|&row| differs[row as usize]),
    ))
}

/// Sets `differs[i]` where row `i` of `key` may differ from row `i - 1`.
fn mark_changes(key: &dyn Array, differs: &mut [bool]) -> Result<()> {
    let rows = key.len();
    if rows < 2 {
        return Ok(());
    }
    match key.data_type() {
        DataType::Utf8View => mark_views(key.as_string_view(), differs),
        DataType::BinaryView => mark_views(key.as_binary_view(), differs),
        DataType::Dictionary(_, _) => {
            let keys = key.as_any_dictionary().keys();
            mark_changes(keys, differs)?;
        }
        data_type => match data_type.primitive_width() {
            Some(1) => mark_primitive::<u8>(key, differs),
            Some(2) => mark_primitive::<u16>(key, differs),
            Some(4) => mark_primitive::<u32>(key, differs),
            Some(8) => mark_primitive::<u64>(key, differs),
            Some(16) => mark_primitive::<u128>(key, differs),
            _ => {
                let distinct = datafusion::arrow::compute::kernels::cmp::distinct(
                    &key.slice(0, rows - 1),
                    &key.slice(1, rows - 1),
                )?;
                for (row, changed) in distinct.values().iter().enumerate() {
                    differs[row + 1] |= changed;
                }
            }
        },
    }
    Ok(())
}

/// A view holds a string of up to 12 bytes whole, and a longer one as (length, prefix,
/// buffer, offset): equal views are equal strings. Different views of equal length and
/// prefix (a long string stored twice) compare their bytes.
fn mark_views<T: ByteViewType>(array: &GenericByteViewArray<T>, differs: &mut [bool]) {
    mark_fixed(array.views(), array.nulls(), differs);
    let views = array.views();
    for row in 1..views.len() {
        let (before, after) = (views[row - 1], views[row]);
        let length = after as u32;
        // The low 64 bits: length, then the 4-byte prefix.
        if differs[row]
            && length > 12
            && before as u64 == after as u64
            && array.is_valid(row)
            && array.is_valid(row - 1)
        {
            let (before, after): (&[u8], &[u8]) =
                (array.value(row - 1).as_ref(), array.value(row).as_ref());
            differs[row] = before != after;
        }
    }
}

/// [`mark_fixed`] over a fixed-width array's values buffer, read as `T`.
fn mark_primitive<T: datafusion::arrow::datatypes::ArrowNativeType + PartialEq>(
    key: &dyn Array,
    differs: &mut [bool],
) {
    let data = key.to_data();
    let values = &data.buffer::<T>(0)[..key.len()];
    mark_fixed(values, key.nulls(), differs);
}

fn mark_fixed<T: PartialEq>(values: &[T], nulls: Option<&NullBuffer>, differs: &mut [bool]) {
    match nulls {
        None => {
            for (row, pair) in values.windows(2).enumerate() {
                differs[row + 1] |= pair[0] != pair[1];
            }
        }
        // A null slot's value is unspecified: two nulls are equal, a null and a value not.
        Some(nulls) => {
            for (row, pair) in values.windows(2).enumerate() {
                let (before, after) = (nulls.is_valid(row), nulls.is_valid(row + 1));
                differs[row + 1] |= before != after || (after && pair[0] != pair[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{DictionaryArray, Int32Array, StringViewArray};
    use datafusion::arrow::datatypes::{Field, Int32Type};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// Rows in runs of equal keys (`ip` long and short strings, some null; `port`;
    /// `app` dictionary-encoded), then the same rows shuffled, each in two partitions of
    /// several batches.
    fn flows() -> MemTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ip", DataType::Utf8View, true),
            Field::new("port", DataType::Int32, true),
            Field::new(
                "app",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("bytes", DataType::Int64, true),
        ]));
        let ips = [
            Some("10.0.0.1"),
            Some("2001:db8:0:0:0:0:0:1"),
            None,
            Some("192.168.100.200"),
            Some("10.0.0.1"),
        ];
        let batch = |rows: &[usize]| {
            let ip: StringViewArray = rows.iter().map(|&r| ips[(r / 7) % ips.len()]).collect();
            let port: Int32Array = rows
                .iter()
                .map(|&r| (r % 11 != 3).then_some((r / 13 % 3) as i32 * 443))
                .collect();
            let app: DictionaryArray<Int32Type> = rows
                .iter()
                .map(|&r| (r % 17 != 0).then_some(["crm", "web"][r / 29 % 2]))
                .collect();
            let bytes: Int64Array = rows
                .iter()
                .map(|&r| (r % 5 != 1).then_some(r as i64 * 1_000_003 - 50_000))
                .collect();
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(ip), Arc::new(port), Arc::new(app), Arc::new(bytes)],
            )
            .unwrap()
        };
        let sorted: Vec<usize> = (0..600).collect();
        let shuffled: Vec<usize> = (0..600).map(|r| r * 389 % 600).collect();
        let partition = |rows: &[usize]| rows.chunks(97).map(batch).collect::<Vec<_>>();
        MemTable::try_new(
            schema.clone(),
            vec![partition(&sorted), partition(&shuffled)],
        )
        .unwrap()
    }

    fn session(rule: Option<RunGroupedPartialAggregate>) -> SessionContext {
        session_probing(rule, 100_000)
    }

    /// Deciding whether partial aggregation pays after `probe_rows` rows.
    fn session_probing(
        rule: Option<RunGroupedPartialAggregate>,
        probe_rows: usize,
    ) -> SessionContext {
        let mut config = SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(97);
        config
            .options_mut()
            .execution
            .skip_partial_aggregation_probe_rows_threshold = probe_rows;
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if let Some(rule) = rule {
            state = state.with_physical_optimizer_rule(Arc::new(rule));
        }
        let ctx = SessionContext::new_with_state(state.build());
        ctx.register_table("flows", Arc::new(flows())).unwrap();
        ctx
    }

    /// The query's sorted answer as text, its plan as text, and the executed plan.
    async fn run(ctx: &SessionContext, sql: &str) -> (String, String, Arc<dyn ExecutionPlan>) {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let batches = collect(plan.clone(), ctx.task_ctx()).await.unwrap();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        let plan_text = displayable(plan.as_ref()).indent(true).to_string();
        (lines.join("\n"), plan_text, plan)
    }

    const QUERIES: &[&str] = &[
        "SELECT ip, count(*) AS n, count(port) AS ports, sum(bytes) AS b, min(bytes) AS lo, \
         max(ip) AS hi, avg(bytes) AS mean FROM flows GROUP BY ip",
        "SELECT ip, port, count(*) AS n, sum(port) AS p, sum(bytes) AS b FROM flows GROUP BY ip, port",
        "SELECT port, sum(bytes) AS b, count(bytes) AS n FROM flows GROUP BY port",
        "SELECT app, ip, count(*) AS n, sum(bytes) AS b FROM flows WHERE port IS NOT NULL GROUP BY app, ip",
        "SELECT port % 2 AS odd, count(*) AS n, sum(bytes) AS b FROM flows GROUP BY 1",
        "SELECT ip, count(DISTINCT port) AS ports FROM flows GROUP BY ip",
    ];

    #[tokio::test]
    async fn answers_equal_the_hash_aggregate_with_runs_nulls_and_shuffled_input() {
        let plain = session(None);
        for flush_groups in [FLUSH_GROUPS, 2] {
            let runs = session(Some(RunGroupedPartialAggregate { flush_groups }));
            for sql in QUERIES {
                let (expected, plain_plan, _) = run(&plain, sql).await;
                let (actual, plan, _) = run(&runs, sql).await;
                assert!(
                    !plain_plan.contains("RunGroupedAggregateExec"),
                    "{plain_plan}"
                );
                assert!(plan.contains("RunGroupedAggregateExec"), "{sql}:\n{plan}");
                assert_eq!(
                    actual, expected,
                    "{sql} (flush every {flush_groups} groups)"
                );
            }
        }
    }

    #[tokio::test]
    async fn passes_rows_through_when_nearly_every_row_is_a_group() {
        let plain = session_probing(None, 150);
        let runs = session_probing(Some(RunGroupedPartialAggregate::default()), 150);
        let sql = "SELECT bytes, ip, count(*) AS n, sum(port) AS p, min(ip) AS lo, avg(port) AS mean \
                   FROM flows GROUP BY bytes, ip";
        let (expected, _, _) = run(&plain, sql).await;
        let (actual, plan_text, plan) = run(&runs, sql).await;
        assert!(plan_text.contains("RunGroupedAggregateExec"), "{plan_text}");
        assert_eq!(actual, expected);
        let partial = partial_output_rows(&plan);
        // 600 rows, nearly all distinct: after the probe they pass through one by one.
        assert!(partial > 550, "partial stage emitted {partial} rows");
    }

    /// Rows the run-grouped partial stage of an executed plan emitted.
    fn partial_output_rows(plan: &Arc<dyn ExecutionPlan>) -> usize {
        let mut rows = 0;
        plan.apply(|node| {
            if let Some(exec) = node.downcast_ref::<RunGroupedAggregateExec>() {
                rows += exec.metrics().and_then(|m| m.output_rows()).unwrap_or(0);
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        rows
    }

    #[tokio::test]
    async fn leaves_filtered_and_ungrouped_aggregates_to_datafusion() {
        let runs = session(Some(RunGroupedPartialAggregate::default()));
        for sql in [
            "SELECT ip, count(*) FILTER (WHERE port > 0) FROM flows GROUP BY ip",
            "SELECT count(*), sum(bytes) FROM flows",
        ] {
            let (_, plan, _) = run(&runs, sql).await;
            assert!(!plan.contains("RunGroupedAggregateExec"), "{sql}:\n{plan}");
        }
    }

    #[test]
    fn runs_start_where_any_key_changes_and_nulls_equal_only_nulls() {
        let ip: ArrayRef = Arc::new(StringViewArray::from(vec![
            Some("a-long-string-of-more-than-12"),
            Some("a-long-string-of-more-than-12"),
            None,
            None,
            Some("b"),
            Some("b"),
        ]));
        let port: ArrayRef = Arc::new(Int32Array::from(vec![1, 1, 1, 1, 1, 2]));
        let starts = run_starts(std::slice::from_ref(&ip), 6).unwrap();
        assert_eq!(starts.values().to_vec(), vec![0, 2, 4]);
        let starts = run_starts(&[ip, port], 6).unwrap();
        assert_eq!(starts.values().to_vec(), vec![0, 2, 4, 5]);
    }

    #[test]
    fn run_sums_wrap_like_sum_and_are_null_only_for_all_null_runs() {
        let values: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(i64::MAX),
            Some(1),
            None,
            None,
            Some(-4),
            None,
        ]));
        let sums = run_sums(&values, &[2, 4, 6]).unwrap();
        let sums = sums.as_primitive::<Int64Type>();
        assert_eq!(
            sums.iter().collect::<Vec<_>>(),
            vec![Some(i64::MIN), None, Some(-4)]
        );
        let counts = run_counts(values.logical_nulls().as_ref(), false, &[2, 4, 6]);
        assert_eq!(
            counts.as_primitive::<Int64Type>().values().to_vec(),
            vec![2, 0, 1]
        );
    }
}
