//! Logical rewrites the engine adds to DataFusion's optimizer.
//!
//! [`PackIntegerGroupKeys`]: `GROUP BY dst_port, protocol` and the like — two integer
//! keys of at most 32 bits — group by one `Int64` that packs both, and the keys are
//! unpacked from it after the aggregate. DataFusion's group table for a single primitive
//! column hashes and compares one machine word per row; for two columns it goes through
//! its generic multi-column path, which over 50M flows took twice as long
//! (`docs/performance.md`).

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{
    Aggregate, Expr, ExprSchemable as _, LogicalPlan, Projection, cast, col, lit,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The name of the packed key column between the aggregate and the unpacking projection.
const PACKED_KEY: &str = "__bulkhead_packed_group_key";

/// See the [module documentation](self).
#[derive(Debug, Default)]
pub struct PackIntegerGroupKeys;

/// Key types that fit in 32 bits once widened to `Int64`.
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
        let key = cast(high_expr, DataType::Int64) * lit(1_i64 << 32)
            + (cast(low_expr, DataType::Int64) + lit(1_i64 << 31));
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
