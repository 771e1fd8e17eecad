//! Logical rewrites the engine adds to DataFusion's optimizer.
//!
//! [`PackIntegerGroupKeys`]: `GROUP BY dst_port, protocol` and the like — two integer
//! keys of at most 32 bits — group by one `Int64` that packs both, and the keys are
//! unpacked from it after the aggregate. DataFusion's group table for a single primitive
//! column hashes and compares one machine word per row; for two columns it goes through
//! its generic multi-column path, which over 50M flows took twice as long
//! (`docs/performance.md`).
//!
//! [`StandardLabelColumns`] (an analyzer rule): `label(src_labels, 'app')` over the
//! `flows` table reads the plain column `src_app` that ingest writes beside the map for
//! the four standard keys (`bulkhead_schemas::policy::STANDARD_LABEL_KEYS`), instead of
//! decoding every key and value of every map. A table created before those columns
//! existed does not have them, and the rule leaves its queries as they are.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow;
use datafusion::arrow::array::{AsArray as _, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::Int32Type;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode as _, TreeNodeRecursion};
use datafusion::common::{Column, Result, ScalarValue, TableReference};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    Aggregate, ColumnarValue, Expr, ExprSchemable as _, LogicalPlan, Projection,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, cast, col, lit,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The name of the packed key column between the aggregate and the unpacking projection.
const PACKED_KEY: &str = "__bulkhead_packed_group_key";

/// See the [module documentation](self).
#[derive(Debug, Default)]
pub struct PackIntegerGroupKeys;

/// Key types whose every value fits in an `Int32`.
fn packable(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16
    )
}

impl OptimizerRule for PackIntegerGroupKeys {
    fn name(&self) -> &str {
        "bulkhead_pack_integer_group_keys"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = plan else {
            return Ok(Transformed::no(plan));
        };
        let Some([high, low]) = packable_keys(&aggregate)? else {
            return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate)));
        };
        // key = high · 2³² + (low + 2³¹): the low half is shifted into [0, 2³²), so the
        // key orders and splits exactly for negative values too.
        let (high_expr, high_type) = high;
        let (low_expr, low_type) = low;
        let key = ScalarUDF::new_from_impl(PackKeys::default()).call(vec![
            cast(high_expr, DataType::Int32),
            cast(low_expr, DataType::Int32),
        ]);
        let packed = Aggregate::try_new(
            aggregate.input.clone(),
            vec![key.alias(PACKED_KEY)],
            aggregate.aggr_expr.clone(),
        )?;
        let key_column = || col(Column::from_name(PACKED_KEY));
        // Floor division by 2³² (an arithmetic shift) gives the high half back; the rest
        // is the shifted low half.
        let unpacked_high = cast(key_column() >> lit(32_i64), high_type);
        let unpacked_low = cast(
            (key_column() & lit(0xFFFF_FFFF_i64)) - lit(1_i64 << 31),
            low_type,
        );
        let original = aggregate.schema.clone();
        let mut columns = Vec::with_capacity(original.fields().len());
        for (i, unpacked) in [unpacked_high, unpacked_low].into_iter().enumerate() {
            let (qualifier, field) = original.qualified_field(i);
            columns.push(unpacked.alias_qualified(qualifier.cloned(), field.name()));
        }
        for i in 2..original.fields().len() {
            let (qualifier, field) = original.qualified_field(i);
            let (new_qualifier, new_field) = packed.schema.qualified_field(i - 1);
            let column = Expr::Column(Column::new(new_qualifier.cloned(), new_field.name()));
            columns.push(column.alias_qualified(qualifier.cloned(), field.name()));
        }
        let projection = Projection::try_new(columns, Arc::new(LogicalPlan::Aggregate(packed)))?;
        Ok(Transformed::yes(LogicalPlan::Projection(projection)))
    }
}

/// `pack(high, low)` = `high · 2³² + (low + 2³¹)` for two `Int32`s, in one pass over the
/// columns: as arithmetic expressions it took two casts and three operations, each
/// writing a new 50M-row column (most of the aggregate's time in `port_histogram`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct PackKeys {
    signature: Signature,
}

impl Default for PackKeys {
    fn default() -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Int32, DataType::Int32],
                Volatility::Immutable,
            ),
        }
    }
}

fn pack(high: i32, low: i32) -> i64 {
    ((high as i64) << 32) + (low as i64 + (1_i64 << 31))
}

impl ScalarUDFImpl for PackKeys {
    fn name(&self) -> &str {
        "__bulkhead_pack_keys"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let (high, low) = (
            arrays[0].as_primitive::<Int32Type>(),
            arrays[1].as_primitive::<Int32Type>(),
        );
        let packed: Int64Array = arrow::compute::binary(high, low, pack)?;
        Ok(ColumnarValue::Array(Arc::new(packed)))
    }
}

type Key = (Expr, DataType);

/// The two group keys, if this is a plain `GROUP BY` of exactly two non-null integer
/// expressions of at most 32 bits.
fn packable_keys(aggregate: &Aggregate) -> Result<Option<[Key; 2]>> {
    if aggregate.group_expr.len() != 2
        || aggregate
            .group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
    {
        return Ok(None);
    }
    let schema = aggregate.input.schema();
    let mut keys = Vec::with_capacity(2);
    for expr in &aggregate.group_expr {
        let (_, field) = expr.to_field(schema)?;
        if field.is_nullable() || !packable(field.data_type()) {
            return Ok(None);
        }
        keys.push((expr.clone(), field.data_type().clone()));
    }
    Ok(<[Key; 2]>::try_from(keys).ok())
}

/// See the [module documentation](self).
#[derive(Debug, Default)]
pub struct StandardLabelColumns;

impl AnalyzerRule for StandardLabelColumns {
    fn name(&self) -> &str {
        "bulkhead_standard_label_columns"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let Some(flows) = flows_scans(&plan)? else {
            return Ok(plan);
        };
        plan.transform_up_with_subqueries(|node| {
            // Only where the node reads the scan's columns by the scan's own name: a
            // label map renamed or computed on the way has no standard column beside it.
            let inputs: Vec<_> = node
                .inputs()
                .into_iter()
                .map(|i| i.schema().clone())
                .collect();
            let standard_column = |map: &Column, key: &str| -> Option<(Column, DataType)> {
                let relation = map.relation.as_ref().filter(|r| flows.contains(*r))?;
                let name = bulkhead_schemas::lake::standard_label_column(&map.name, key)?;
                let column = Column::new(Some(relation.clone()), name);
                let field = inputs
                    .iter()
                    .find_map(|s| s.qualified_field_from_column(&column).ok().map(|(_, f)| f))?;
                Some((column, field.data_type().clone()))
            };
            let names = NamePreserver::new(&node);
            let rewritten = node.map_expressions(|expr| {
                let name = names.save(&expr);
                let out = expr.transform_up(|e| {
                    let Some((map, key)) = label_call(&e) else {
                        return Ok(Transformed::no(e));
                    };
                    // `label` answers Utf8: the column is cast if the scan reads views.
                    match standard_column(map, key) {
                        Some((column, DataType::Utf8)) => {
                            Ok(Transformed::yes(Expr::Column(column)))
                        }
                        Some((column, _)) => {
                            Ok(Transformed::yes(cast(Expr::Column(column), DataType::Utf8)))
                        }
                        None => Ok(Transformed::no(e)),
                    }
                })?;
                Ok(out.update_data(|e| name.restore(e)))
            })?;
            if rewritten.transformed {
                rewritten.map_data(|p| p.recompute_schema())
            } else {
                Ok(rewritten)
            }
        })
        .map(|t| t.data)
    }
}

/// The names of the plan's scans of a `flows` table with standard label columns, or
/// `None` when there are none, or when a subquery alias reuses one of those names (its
/// columns could then be anything; the rule stays out).
fn flows_scans(plan: &LogicalPlan) -> Result<Option<HashSet<TableReference>>> {
    let mut scans = HashSet::new();
    let mut aliases = HashSet::new();
    plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::TableScan(scan)
                if scan.table_name.table() == "flows"
                    && scan.source.schema().field_with_name("src_app").is_ok() =>
            {
                scans.insert(scan.table_name.clone());
            }
            LogicalPlan::SubqueryAlias(alias) => {
                aliases.insert(alias.alias.table().to_string());
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let shadowed = scans.iter().any(|s| aliases.contains(s.table()));
    Ok((!scans.is_empty() && !shadowed).then_some(scans))
}

/// `(map column, key)` of a `label(column, 'literal key')` call.
fn label_call(expr: &Expr) -> Option<(&Column, &str)> {
    let Expr::ScalarFunction(ScalarFunction { func, args }) = expr else {
        return None;
    };
    match (func.name(), args.as_slice()) {
        (
            "label",
            [
                Expr::Column(map),
                Expr::Literal(
                    ScalarValue::Utf8(Some(key))
                    | ScalarValue::Utf8View(Some(key))
                    | ScalarValue::LargeUtf8(Some(key)),
                    _,
                ),
            ],
        ) => Some((map, key.as_str())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, RecordBatch, UInt8Array};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    fn table(nullable_port: bool) -> MemTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("dst_port", DataType::Int32, nullable_port),
            Field::new("protocol", DataType::UInt8, false),
            Field::new("bytes", DataType::Int32, false),
        ]));
        let ports = [443, 53, i32::MIN, i32::MAX, -1, 443, 53, 0];
        let protocols = [6_u8, 17, 255, 0, 6, 6, 17, 1];
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from(ports.to_vec())),
                Arc::new(UInt8Array::from(protocols.to_vec())),
                Arc::new(Int32Array::from((1..=8).collect::<Vec<i32>>())),
            ],
        )
        .unwrap();
        MemTable::try_new(schema, vec![vec![batch]]).unwrap()
    }

    async fn run(packed: bool, nullable_port: bool, sql: &str) -> (String, String) {
        let ctx = SessionContext::new();
        if packed {
            ctx.add_optimizer_rule(Arc::new(PackIntegerGroupKeys));
        }
        ctx.register_table("flows", Arc::new(table(nullable_port)))
            .unwrap();
        let frame = ctx.sql(sql).await.unwrap();
        let plan = format!(
            "{}",
            frame
                .clone()
                .into_optimized_plan()
                .unwrap()
                .display_indent()
        );
        let rows =
            datafusion::arrow::util::pretty::pretty_format_batches(&frame.collect().await.unwrap())
                .unwrap()
                .to_string();
        (plan, rows)
    }

    const SQL: &str = "SELECT dst_port, protocol, count(*) AS flows, sum(bytes) AS bytes \
        FROM flows GROUP BY 1, 2 HAVING count(*) > 0 ORDER BY dst_port, protocol";

    #[tokio::test]
    async fn two_integer_keys_group_by_one_packed_key_with_the_same_answer() {
        let (plain_plan, plain) = run(false, false, SQL).await;
        let (packed_plan, packed) = run(true, false, SQL).await;
        assert!(!plain_plan.contains(PACKED_KEY));
        assert!(
            packed_plan.contains(PACKED_KEY),
            "rule did not fire:\n{packed_plan}"
        );
        assert_eq!(packed, plain, "extremes and negatives unpack exactly");
        assert!(packed.contains("-2147483648") && packed.contains("2147483647"));
    }

    #[tokio::test]
    async fn nullable_or_other_shapes_are_left_alone() {
        let (plan, _) = run(true, true, SQL).await;
        assert!(
            !plan.contains(PACKED_KEY),
            "a nullable key must not be packed"
        );
        let one_key = "SELECT dst_port, count(*) FROM flows GROUP BY dst_port";
        assert!(!run(true, false, one_key).await.0.contains(PACKED_KEY));
        let three = "SELECT dst_port, protocol, bytes, count(*) FROM flows GROUP BY 1, 2, 3";
        assert!(!run(true, false, three).await.0.contains(PACKED_KEY));
    }
}

#[cfg(test)]
mod standard_label_tests {
    use super::*;
    use datafusion::arrow::array::builder::{MapBuilder, StringBuilder};
    use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    /// A `flows` table of three rows: labels `{app: crm, team: blue}`, `{app: web}` and
    /// none; with `standard`, also the `src_app` column that ingest writes beside them.
    fn flows(standard: bool) -> MemTable {
        let mut maps = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for row in [
            &[("app", "crm"), ("team", "blue")][..],
            &[("app", "web")],
            &[],
        ] {
            for (k, v) in row {
                maps.keys().append_value(k);
                maps.values().append_value(v);
            }
            maps.append(!row.is_empty()).unwrap();
        }
        let maps: ArrayRef = Arc::new(maps.finish());
        let mut fields = vec![Field::new("src_labels", maps.data_type().clone(), true)];
        let mut columns = vec![maps];
        if standard {
            fields.push(Field::new("src_app", DataType::Utf8, true));
            columns.push(Arc::new(StringArray::from(vec![
                Some("crm"),
                Some("web"),
                None,
            ])));
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        MemTable::try_new(schema, vec![vec![batch]]).unwrap()
    }

    /// The columns the optimized plan's scan reads, and the answer.
    async fn run(rule: bool, standard: bool, sql: &str) -> (String, String) {
        let ctx = SessionContext::new();
        crate::udf::register(&ctx);
        if rule {
            ctx.add_analyzer_rule(Arc::new(StandardLabelColumns));
        }
        ctx.register_table("flows", Arc::new(flows(standard)))
            .unwrap();
        let frame = ctx.sql(sql).await.unwrap();
        let plan = frame.clone().into_optimized_plan().unwrap();
        let scan = format!("{}", plan.display_indent())
            .lines()
            .filter(|l| l.contains("TableScan"))
            .collect::<Vec<_>>()
            .join("\n");
        let rows =
            datafusion::arrow::util::pretty::pretty_format_batches(&frame.collect().await.unwrap())
                .unwrap()
                .to_string();
        (scan, rows)
    }

    #[tokio::test]
    async fn a_standard_key_reads_its_column_with_the_same_answer() {
        for sql in [
            "SELECT label(src_labels, 'app') AS app, count(*) AS n FROM flows GROUP BY 1 ORDER BY 1",
            "SELECT count(*) FROM flows WHERE label(src_labels, 'app') = 'crm'",
            "SELECT upper(label(src_labels, 'app')) FROM flows ORDER BY 1",
            "SELECT label(src_labels, 'app') FROM flows WHERE label(src_labels, 'app') IN \
             (SELECT label(src_labels, 'app') FROM flows WHERE label(src_labels, 'app') > 'd')",
        ] {
            let (plain_scan, plain) = run(false, true, sql).await;
            let (scan, rows) = run(true, true, sql).await;
            assert!(plain_scan.contains("src_labels"), "{plain_scan}");
            assert!(
                scan.contains("src_app") && !scan.contains("src_labels"),
                "the rule did not fire for {sql}:\n{scan}"
            );
            assert_eq!(rows, plain, "{sql}");
        }
    }

    #[tokio::test]
    async fn other_keys_renamed_maps_and_older_tables_are_left_alone() {
        let custom = "SELECT label(src_labels, 'team') FROM flows ORDER BY 1";
        let (scan, rows) = run(true, true, custom).await;
        assert!(
            scan.contains("src_labels") && rows.contains("blue"),
            "{scan}\n{rows}"
        );
        // An alias that reuses the table's name could put anything in `src_app`.
        let shadowed = "SELECT label(src_labels, 'app') AS app FROM \
            (SELECT src_labels, 'not-the-label' AS src_app FROM flows) AS flows ORDER BY 1";
        let (_, rows) = run(true, true, shadowed).await;
        assert!(
            rows.contains("crm") && !rows.contains("not-the-label"),
            "{rows}"
        );
        let older = "SELECT label(src_labels, 'app') AS app FROM flows ORDER BY 1";
        let (scan, rows) = run(true, false, older).await;
        assert!(
            scan.contains("src_labels") && rows.contains("crm"),
            "{scan}\n{rows}"
        );
    }
}
